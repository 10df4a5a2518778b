"""The typed, immutable evidence model.

A capture produces one `Manifest`: what was asked, where and how it was recorded (`Provenance`),
the grid (`Layout`), each tile's outcome (`TileResult`), each step of the capture state machine
(`Step`) and every file kept (`Artifact`). Progress is reported as `CaptureEvent`s, which the CLI
prints and the future API will stream.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

MANIFEST_SCHEMA = "wangzheng/capture-manifest/v1"
PRESERVATION_SCHEMA = "wangzheng/preservation/v1"

HexSha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
MAX_LABEL_LENGTH = 200


def _printable_line(value: str) -> str:
    """Text that ends up in reports, logs and terminals: one printable line, nothing that moves a cursor,
    erases a line or reorders what a reader sees."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be UTF-8 text") from None
    bad = next((ch for ch in value if not ch.isprintable()), None)
    if bad is not None:
        raise ValueError(f"must be printable text on one line (found {bad!r}: newlines, tabs, terminal escapes "
                         "and other control characters are refused)")
    return value


def _printable_label(value: str) -> str:
    """Names people give (a case number, an operator): a printable line, not empty, not long."""
    value = _printable_line(value.strip())  # surrounding spaces and a trailing newline are trimmed, not refused
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_LABEL_LENGTH:
        raise ValueError(f"must be at most {MAX_LABEL_LENGTH} characters, not {len(value)}")
    return value


Label = Annotated[str, AfterValidator(_printable_label)]
PrintableLine = Annotated[str, AfterValidator(_printable_line)]


class Frozen(BaseModel):
    """Base for every model here: immutable, strict about unknown fields, no infinite or NaN figures (canonical JSON
    cannot hold them, so only a forged document could: a cost of "inf cores" would otherwise print as a figure)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class CaptureStatus(StrEnum):
    RECORDING = "recording"
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"


class TileStatus(StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    RECORDING = "recording"
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"


class StepName(StrEnum):
    """The capture state machine, in order."""

    INIT = "init"
    ENVIRONMENT = "environment"
    SETUP = "setup"
    LOAD = "load"
    RECORD = "record"
    COLLECT = "collect"
    FINALIZE = "finalize"
    MANIFEST = "manifest"
    RECOVER = "recover"


class StepOutcome(StrEnum):
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"
    SKIPPED = "skipped"


class ArtifactRole(StrEnum):
    COMPOSITE = "composite"
    TILE_VIDEO = "tile-video"
    SEGMENT = "segment"
    AUDIO_SEGMENT = "audio-segment"
    FRAME_TIMES = "frame-times"
    SCREENSHOT = "screenshot"
    DOM = "dom"
    HAR = "har"
    CONSOLE = "console"
    TIMELINE = "timeline"
    CERTIFICATE = "certificate"
    STREAM = "stream"
    PAGE_INFO = "page-info"
    STREAM_INFO = "stream-info"
    SEGMENT_CHAIN = "segment-chain"
    TIMESTAMP = "timestamp"
    LOG = "log"


class Digests(Frozen):
    sha256: HexSha256
    sm3: HexSha256


class Rect(Frozen):
    """A rectangle in the composite video, in pixels."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.width, self.height]


class TileLayout(Frozen):
    tile: int = Field(ge=1, le=9)
    url: str
    rect: Rect
    label_rect: Rect


class Layout(Frozen):
    """The grid: where each tile sits in the composite video."""

    rows: int = Field(ge=1, le=3)
    cols: int = Field(ge=1, le=3)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    fps: int = Field(ge=1, le=60)
    header_rect: Rect
    tiles: tuple[TileLayout, ...]

    def tile(self, number: int) -> TileLayout:
        for tile in self.tiles:
            if tile.tile == number:
                return tile
        raise KeyError(f"no tile {number} in this layout")


class Artifact(Frozen):
    """One file kept by a capture, addressed relative to the capture directory."""

    path: str
    role: ArtifactRole
    media_type: str
    size: int = Field(ge=0)
    digests: Digests
    tile: int | None = None
    description: str = ""
    source_url: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @field_validator("path")
    @classmethod
    def _relative_posix(cls, value: str) -> str:
        if value.startswith("/") or "\\" in value or ".." in value.split("/"):
            raise ValueError(f"artifact path must be relative inside the capture directory: {value!r}")
        return value


class Step(Frozen):
    name: StepName
    outcome: StepOutcome
    started_at: datetime
    ended_at: datetime
    detail: str = ""


class TileResult(Frozen):
    tile: int = Field(ge=1, le=9)
    url: str
    status: TileStatus
    reason: str = ""
    final_url: str | None = None
    redirect_chain: tuple[str, ...] = ()
    title: str | None = None
    http_status: int | None = None
    remote_ip: str | None = None
    user_agent: str | None = None
    audio_sink: str | None = None
    media_urls: tuple[str, ...] = ()
    loaded_at: datetime | None = None
    failed_at: datetime | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class ClockCheck(Frozen):
    """The local clock against an NTP server, or why that could not be measured."""

    server: str
    offset_seconds: float | None = None
    round_trip_seconds: float | None = None
    checked_at: datetime
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.offset_seconds is not None


class Provenance(Frozen):
    """Who captured what, where, with which tools: the environment a court asks about."""

    tool: str
    tool_version: str
    git_commit: str | None
    python: str
    components: dict[str, str]
    os: str
    kernel: str
    hostname: str
    ip_addresses: tuple[str, ...]
    user_agent: str | None
    launch_flags: tuple[str, ...]
    options: dict[str, Any]
    operator: str
    case_id: str | None
    proxy: dict[str, str]
    etc_hosts_sha256: str | None
    resolv_conf: str | None
    dns: dict[str, tuple[str, ...]]
    dns_errors: dict[str, str] = Field(default_factory=dict)
    clock: ClockCheck
    timezone: str
    browser_profile: str


class SyncVerdict(StrEnum):
    IN_SYNC = "in-sync"  # every composite frame on time and no tile's browser dropping frames
    DEGRADED = "degraded"  # see the spans: when, what and how much
    NOT_MEASURED = "not-measured"  # the tile never recorded (failed), or nothing could be read


class DegradedCause(StrEnum):
    COMPOSITE_LATE = "composite-late"  # the screen grab fell behind: frames came more than one frame late
    BROWSER_DROPPED = "browser-dropped"  # the tile's browser dropped more than 1 % of its video frames


class DegradedSpan(Frozen):
    """A stretch of the recording, in seconds of the composite, where a measure fell outside its bound."""

    cause: DegradedCause
    start_seconds: float
    end_seconds: float
    worst: float  # the worst figure inside: a frame interval in ms, or a dropped share
    bound: float  # the figure it went past


class CompositeTiming(Frozen):
    """The composite's own frame intervals, from the grab times of every frame (frames.csv)."""

    fps: int
    frames: int
    interval_p50_ms: float
    interval_p95_ms: float
    interval_max_ms: float
    longest_gap_at_seconds: float  # where the longest interval begins, in seconds of the composite
    late_frames: int  # intervals longer than two frame periods: a frame was missed there


class MachineLoad(Frozen):
    """How busy the machine was while recording (all cores, from /proc/stat, sampled about once a second)."""

    cores: int
    samples: int
    busy_mean: float
    busy_p95: float
    saturated_seconds: float  # seconds with every core at least 95 % busy


class TileSync(Frozen):
    tile: int = Field(ge=1, le=9)
    verdict: SyncVerdict
    video_frames_decoded: int | None = None  # what the tile's browser reported over the recording
    video_frames_dropped: int | None = None
    dropped_share: float | None = None
    spans: tuple[DegradedSpan, ...] = ()
    remark: PrintableLine = ""  # printed by `wz verify`
    # What the tile's browser (all its processes) cost while recording: mean cores, and the most over any few
    # seconds; None where it was not measured.
    cpu_cores_mean: float | None = Field(default=None, ge=0)
    cpu_cores_peak: float | None = Field(default=None, ge=0)
    # Composite seconds at which its browser's CPU priority was lowered, because it cost far more than the other
    # tiles while every core was busy (so the others keep their rate); None when it never was.
    priority_lowered_at_seconds: float | None = Field(default=None, ge=0)


class SyncQuality(Frozen):
    """The capture's own measure of its synchronization, signed and timestamped with the rest of the manifest."""

    method: PrintableLine
    composite: CompositeTiming | None
    machine: MachineLoad | None
    tiles: tuple[TileSync, ...]


class Manifest(Frozen):
    """Everything a capture kept and everything that happened to it."""

    schema_id: str = Field(default=MANIFEST_SCHEMA, alias="schema")
    capture_id: str
    status: CaptureStatus
    reason: str = ""
    started_at: datetime
    ended_at: datetime
    requested_duration_seconds: float | None
    recorded_seconds: float
    provenance: Provenance
    layout: Layout
    tiles: tuple[TileResult, ...]
    steps: tuple[Step, ...]
    artifacts: tuple[Artifact, ...]
    # Absent from manifests made before captures measured their own synchronization.
    sync: SyncQuality | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def artifacts_for(self, role: ArtifactRole, tile: int | None = None) -> tuple[Artifact, ...]:
        return tuple(a for a in self.artifacts if a.role == role and (tile is None or a.tile == tile))


class CaptureRequest(Frozen):
    """What an investigator asked to capture."""

    urls: tuple[str, ...] = Field(min_length=1, max_length=9)
    duration_seconds: float | None = Field(default=None, gt=0)
    out_dir: str | None = None
    fps: int = Field(default=15, ge=1, le=30)
    layout: str = "auto"
    tile_size: Literal["640x360", "960x540", "1280x720"] = "640x360"  # capture.layout.TILE_SIZES
    case_id: Label | None = None
    operator: Label = "unknown"


class EventKind(StrEnum):
    STEP = "step"
    TILE = "tile"
    PROGRESS = "progress"
    ARTIFACT = "artifact"
    DONE = "done"


class CaptureEvent(Frozen):
    """A progress report from a running capture, for a terminal, a log or a web page."""

    capture_id: str
    at: datetime
    kind: EventKind
    message: str
    step: StepName | None = None
    outcome: StepOutcome | None = None
    tile: int | None = None
    tile_status: TileStatus | None = None
    status: CaptureStatus | None = None
    elapsed_seconds: float | None = None
    # A tile held back: what its browser cost and the other tiles' median (SyncMonitor.costly_tile).
    cpu_cores: float | None = None
    others_cores: float | None = None


class TimestampStatus(StrEnum):
    GRANTED = "granted"
    PENDING = "pending"


class TimestampRecord(Frozen):
    """One RFC 3161 token (or a pending request) for one digest from one TSA.

    Paths are relative to the folder that holds the stamped data (the capture directory).
    """

    tsa_url: str
    local_tsa: bool
    status: TimestampStatus
    hash_algorithm: str
    message_imprint: str
    nonce: int | None = None
    request_path: str | None = None
    response_path: str | None = None
    chain_path: str | None = None
    gen_time: datetime | None = None
    serial_number: int | None = None
    policy: str | None = None
    tsa_name: str | None = None
    error: str | None = None


class StoredObject(Frozen):
    """One object version written to the WORM store."""

    bucket: str
    key: str
    version_id: str
    size: int = Field(ge=0)
    digests: Digests
    retention_mode: str
    retain_until: datetime
    legal_hold: bool = False
    verified_at: datetime | None = None


class CustodyAction(StrEnum):
    """Every action the custody ledger records. The value is what is hashed into the entry."""

    CAPTURED = "captured"  # a capture finished recording (its manifest exists)
    HASHED = "hashed"  # the manifest's digests were recorded
    SIGNED = "signed"  # the manifest was signed
    TIMESTAMPED = "timestamped"  # an RFC 3161 token was granted
    TIMESTAMP_PENDING = "timestamp-pending"  # a TSA did not answer; the request is kept
    STORED = "stored"  # an object version was written to WORM storage, read back and verified
    LEGAL_HOLD = "legal-hold"
    LEGAL_HOLD_RELEASED = "legal-hold-released"
    EXPORTED = "exported"  # a package is about to be written
    EXPORT_WRITTEN = "export-written"  # the package's own digests, once written
    VERIFIED = "verified"  # an online verification ran (passed or not)
    GUARDS_RESTORED = "guards-restored"  # the ledger's append-only triggers were found gone and put back on purpose
    # -- the custody service: who may do what, and everything anyone did --
    USER_CREATED = "user-created"
    TOKEN_CREATED = "token-created"  # noqa: S105 - an action name, not a secret
    TOKEN_REVOKED = "token-revoked"  # noqa: S105 - an action name, not a secret
    LOGIN_LOCKED = "login-locked"  # too many failed logins: the account waits
    CASE_CREATED = "case-created"
    CASE_UPDATED = "case-updated"
    CASE_STATE_CHANGED = "case-state-changed"  # lead -> opened -> closed, with an outcome
    MEMBER_SET = "member-set"
    MEMBER_REMOVED = "member-removed"
    VIEWED = "viewed"  # a case, a capture, its custody record or a log entry was read
    DOWNLOADED = "downloaded"
    DOWNLOAD_CUT_OFF = "download-cut-off"  # the stored bytes did not match the manifest: the download was stopped
    HASH_LOOKUP = "hash-lookup"  # the public hash check was asked (found or not)
    PACKAGE_VERIFIED = "package-verified"  # a package was uploaded and verified
    CAPTURE_REQUESTED = "capture-requested"  # committed with the queued job, in one transaction
    CAPTURE_STARTED = "capture-started"  # a worker took the job
    CAPTURE_STOP_REQUESTED = "capture-stop-requested"
    CAPTURE_WITNESSED = "capture-witnessed"  # the second officer confirmed with their own login
    CAPTURE_INTERRUPTED = "capture-interrupted"  # its worker stopped beating (killed, host down)
    CAPTURE_ENDED = "capture-ended"  # complete, partial or failed, with the reason
    REPORT_GENERATED = "report-generated"  # an evidence report PDF was made, stored (WORM) and indexed by its digests


class CustodyEntry(Frozen):
    """One action on one item, chained to the entry before it."""

    seq: int = Field(ge=1)
    at: datetime
    actor: str
    action: CustodyAction
    subject: str
    details: dict[str, Any] = Field(default_factory=dict)
    prev_hash: HexSha256
    entry_hash: HexSha256


class Checkpoint(Frozen):
    """A signed statement of the ledger's Merkle tree: size and root at a time."""

    tree_size: int = Field(ge=0)
    root_hash: HexSha256
    at: datetime
    signer: str
    signature: str  # base64 DER ECDSA over the checkpoint's canonical body
    timestamp: TimestampRecord | None = None


class PreservationStep(StrEnum):
    """Steps of preservation recorded once each, so a run resumed after a crash skips what was done."""

    CAPTURED = "captured"
    HASHED = "hashed"
    SIGNED = "signed"
    TIMESTAMPED = "timestamped"


class FileDigest(Frozen):
    """One file's size and digests, addressed relative to the capture directory."""

    path: str
    size: int = Field(ge=0)
    sha256: HexSha256
    sm3: HexSha256

    @property
    def digests(self) -> Digests:
        return Digests(sha256=self.sha256, sm3=self.sm3)


class SignatureRecord(Frozen):
    """The detached signature over the manifest's exact bytes."""

    path: str
    format: str
    signer: str
    sha256: HexSha256
    certificates: tuple[str, ...] = ()


class PreservationRecord(Frozen):
    """What preservation did to one capture (`preservation.json`): each fact is verifiable on its own.

    Each stage returns a new record (`evolve`); the record on disk is replaced atomically after each.
    """

    schema_id: str = Field(default=PRESERVATION_SCHEMA, alias="schema")
    capture_id: str
    manifest: FileDigest
    signature: SignatureRecord | None = None
    timestamps: tuple[TimestampRecord, ...] = ()  # over the manifest
    chain_timestamps: tuple[TimestampRecord, ...] = ()  # over the segment chain head, granted after the capture
    stored: tuple[StoredObject, ...] = ()  # sorted by key, one version per key
    custody_seqs: tuple[int, ...] = ()
    problems: tuple[str, ...] = ()
    done: tuple[PreservationStep, ...] = ()
    complete: bool = False

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _read_first_format(cls, data: Any) -> Any:
        """Records written before the schema was named kept `stored` as a map and `signature` as {} when unsigned."""
        if not isinstance(data, dict) or "schema" in data:
            return data
        upgraded = dict(data)
        if isinstance(upgraded.get("stored"), dict):
            upgraded["stored"] = [upgraded["stored"][key] for key in sorted(upgraded["stored"])]
        if upgraded.get("signature") == {}:
            upgraded["signature"] = None
        return upgraded

    @property
    def pending_timestamps(self) -> tuple[TimestampRecord, ...]:
        return tuple(t for t in self.timestamps if t.status == TimestampStatus.PENDING)

    @property
    def granted_timestamps(self) -> tuple[TimestampRecord, ...]:
        return tuple(t for t in self.timestamps if t.status == TimestampStatus.GRANTED)

    def stored_by_key(self) -> dict[str, StoredObject]:
        return {obj.key: obj for obj in self.stored}

    def with_stored(self, obj: StoredObject) -> PreservationRecord:
        by_key = self.stored_by_key()
        by_key[obj.key] = obj
        return self.model_copy(update={"stored": tuple(by_key[key] for key in sorted(by_key))})

    def with_custody(self, seq: int) -> PreservationRecord:
        return self.model_copy(update={"custody_seqs": (*self.custody_seqs, seq)})

    def with_problem(self, problem: str) -> PreservationRecord:
        return self.model_copy(update={"problems": (*self.problems, problem)})

    def with_done(self, step: PreservationStep) -> PreservationRecord:
        return self.model_copy(update={"done": (*self.done, step)})
