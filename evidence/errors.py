"""One error tree for the whole project.

    EvidenceError                  anything Wangzheng refuses or fails to do
    ├── ConfigurationError         a setting is missing, malformed or unsafe
    ├── UsageError                 the operator asked for something invalid (CLI exit 2)
    │   └── TargetRefused          a URL the capture will not visit (private address, bad scheme)
    ├── ComponentMissing           a required program (chromium, ffmpeg, Xvfb, ...) is absent or broken
    ├── CaptureError               a capture could not be carried out
    │   └── RecorderFailed         a recorder (screen, audio, stream) died or wrote nothing usable
    ├── IntegrityError             verification found something that does not hold (names what)
    │   ├── DigestMismatch         bytes differ from their recorded SHA-256 / SM3
    │   ├── SignatureInvalid       a CMS signature or checkpoint signature does not verify
    │   ├── TimestampInvalid       an RFC 3161 token is wrong (status, imprint, nonce, EKU, signature)
    │   └── LedgerCorrupt          the custody ledger's hash chain or Merkle tree does not recompute
    ├── TimestampUnavailable       no TSA answered; the token stays pending and is requested again
    └── StorageError               the object store refused or failed an operation
        ├── StoreUnavailable       the store cannot be reached; files stay in the local spool
        └── ObjectLockMissing      the bucket has no Object Lock and the unsafe setting is off

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


class IntegrityError(EvidenceError):
    """Verification failed; the message names the artifact and the check."""


class DigestMismatch(IntegrityError):
    """Bytes differ from their recorded digest."""


class SignatureInvalid(IntegrityError):
    """A signature does not verify."""


class TimestampInvalid(IntegrityError):
    """An RFC 3161 timestamp token does not verify."""


class LedgerCorrupt(IntegrityError):
    """The custody ledger does not recompute."""


class TimestampUnavailable(EvidenceError):
    """No time-stamp authority could be reached."""


class StorageError(EvidenceError):
    """The object store refused or failed an operation."""


class StoreUnavailable(StorageError):
    """The object store cannot be reached."""


class ObjectLockMissing(StorageError):
    """The bucket has no Object Lock configuration."""
