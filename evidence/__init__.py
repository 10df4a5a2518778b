"""The evidence model shared by every stage of Wangzheng.

A leaf package: it imports nothing of ours and does no I/O. Every object is a frozen,
typed pydantic model; each pipeline stage returns a new object instead of mutating one.
"""

from evidence.errors import (
    CaptureError,
    ComponentMissing,
    ConfigurationError,
    EvidenceError,
    RecorderFailed,
    TargetRefused,
    UsageError,
)
from evidence.model import (
    Artifact,
    ArtifactRole,
    CaptureEvent,
    CaptureRequest,
    CaptureStatus,
    ClockCheck,
    Digests,
    EventKind,
    Layout,
    Manifest,
    Provenance,
    Rect,
    Step,
    StepName,
    StepOutcome,
    TileLayout,
    TileResult,
    TileStatus,
)
from evidence.settings import Settings

__all__ = [
    "Artifact",
    "ArtifactRole",
    "CaptureError",
    "CaptureEvent",
    "CaptureRequest",
    "CaptureStatus",
    "ClockCheck",
    "ComponentMissing",
    "ConfigurationError",
    "Digests",
    "EventKind",
    "EvidenceError",
    "Layout",
    "Manifest",
    "Provenance",
    "RecorderFailed",
    "Rect",
    "Settings",
    "Step",
    "StepName",
    "StepOutcome",
    "TargetRefused",
    "TileLayout",
    "TileResult",
    "TileStatus",
    "UsageError",
]
