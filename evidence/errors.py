"""One error tree for the whole project.

    EvidenceError                  anything Wangzheng refuses or fails to do
    ├── ConfigurationError         a setting is missing, malformed or unsafe
    ├── UsageError                 the operator asked for something invalid (CLI exit 2)
    │   └── TargetRefused          a URL the capture will not visit (private address, bad scheme)
    ├── ComponentMissing           a required program (chromium, ffmpeg, Xvfb, ...) is absent or broken
    └── CaptureError               a capture could not be carried out
        └── RecorderFailed         a recorder (screen, audio, stream) died or wrote nothing usable

Library errors are wrapped where they enter our code; every message says what to do next.
"""


class EvidenceError(Exception):
    """Base of every error Wangzheng raises on purpose."""


class ConfigurationError(EvidenceError):
    """A setting is missing, malformed or unsafe."""


class UsageError(EvidenceError):
    """The operator asked for something invalid; nothing was done."""


class TargetRefused(UsageError):
    """A capture target that must not be visited."""


class ComponentMissing(EvidenceError):
    """A program the capture needs is absent or does not run."""


class CaptureError(EvidenceError):
    """The capture could not be carried out."""


class RecorderFailed(CaptureError):
    """A recorder process died or wrote nothing usable."""
