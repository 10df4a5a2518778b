"""What the API takes and gives: one Create (or Update) and one Public model per resource."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from evidence.model import Label

Title = Annotated[Label, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
# Free text may span lines; control characters (NUL above all, which PostgreSQL refuses) may not.
NO_CONTROLS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
Text = Annotated[str, StringConstraints(max_length=20_000, pattern=NO_CONTROLS)]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
UserName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Role = Literal["admin", "investigator", "case_handler", "court"]
CaseRole = Literal["investigator", "case_handler", "court"]
CaseState = Literal["lead", "opened", "closed"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenPublic(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - OAuth2's token type, not a secret
    expires_at: datetime


class UserPublic(BaseModel):
    id: int
    name: str
    role: Role
    created_at: datetime
    locked_until: datetime | None = None
    disabled: bool = False


class UserCreate(Strict):
    name: UserName
    role: Role
    password: Annotated[str, StringConstraints(min_length=10, max_length=1000)]


class CaseCreate(Strict):
    title: Title
    description: Text = ""
    reference: Annotated[Label, StringConstraints(max_length=200)] | None = None


class CaseUpdate(Strict):
    title: Title | None = None
    description: Text | None = None
    state: CaseState | None = None
    outcome: Text | None = None

    @model_validator(mode="after")
    def _something(self) -> CaseUpdate:
        if all(value is None for value in (self.title, self.description, self.state, self.outcome)):
            raise ValueError("give at least one of title, description, state, outcome")
        return self


class MemberPublic(BaseModel):
    user: str
    role: CaseRole
    added_at: datetime


class CasePublic(BaseModel):
    id: str
    title: str
    description: str
    reference: str
    state: CaseState
    outcome: str | None
    legal_hold: bool
    created_by: str
    created_at: datetime
    updated_at: datetime
    your_role: CaseRole
    members: list[MemberPublic] = Field(default_factory=list)


class MemberSet(Strict):
    role: CaseRole


class LegalHoldSet(Strict):
    on: bool
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000,
                                             pattern=NO_CONTROLS)]


class LegalHoldPublic(BaseModel):
    on: bool
    captures: int
    objects: int


class CustodyEntryPublic(BaseModel):
    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    entry_hash: str


class CheckpointPublic(BaseModel):
    tree_size: int
    root_hash: str
    at: datetime
    signer: str
    signature: str
    body: str = Field(description="the exact bytes the signature covers (canonical JSON)")
    signer_certificate: str
    timestamp: dict[str, Any] | None = None
    timestamp_token: str | None = Field(default=None, description="base64 RFC 3161 token over SHA-256(body)")


class MediaTicketPublic(BaseModel):
    ticket: str = Field(description="add as ?ticket= to this capture's file URLs; read-only, this capture only")
    capture_id: str
    expires_at: datetime


class ReportPublic(BaseModel):
    path: str = Field(description="its path among the capture's files: GET /captures/{capture_id}/artifacts/{path}")
    size: int
    sha256: str
    sm3: str
    version_id: str | None
    custody_seq: int | None = Field(description="the custody entry that registered it")
    generated_at: datetime


class InclusionProofPublic(BaseModel):
    seq: int
    leaf_index: int
    tree_size: int
    leaf_hash: str
    root: str
    path: list[str]


class ConsistencyProofPublic(BaseModel):
    old_size: int
    new_size: int
    old_root: str
    new_root: str
    path: list[str]


class HashQuery(Strict):
    sha256: Hex64 | None = None
    sm3: Hex64 | None = None

    @model_validator(mode="after")
    def _one(self) -> HashQuery:
        if (self.sha256 is None) == (self.sm3 is None):
            raise ValueError("give exactly one of sha256 or sm3 (64 hexadecimal digits)")
        return self


class TimestampPublic(BaseModel):
    tsa: str
    local_tsa: bool
    time: datetime | None
    serial: int | None


class HashMatch(BaseModel):
    capture_id: str
    role: str
    acquired_at: datetime
    timestamps: list[TimestampPublic]
    custody_proof: InclusionProofPublic | None = None


class HashAnswer(BaseModel):
    registered: bool
    matches: list[HashMatch] = Field(default_factory=list)
    checkpoint_tree_size: int | None = None
    note: str


class VerificationCheck(BaseModel):
    name: str
    subject: str
    ok: bool
    detail: str


class PackageReport(BaseModel):
    ok: bool
    origin_pinned: bool
    tsa_pinned: bool
    third_party_time: bool
    checks: list[VerificationCheck]


class CaptureCreate(Strict):
    urls: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=8192, pattern=NO_CONTROLS)]],
                    Field(min_length=1, max_length=9, description="1 to 9 pages, recorded side by side")]
    duration: Annotated[float | None, Field(gt=0, description="seconds; omit for an open-ended capture that "
                                                              "runs until stopped (or the maximum duration)")] = None
    fps: Annotated[int, Field(ge=1, le=30)] = 15
    layout: Annotated[str, StringConstraints(pattern=r"^(auto|[1-9]x[1-9])$")] = "auto"
    tile_size: Annotated[Literal["640x360", "960x540", "1280x720"], Field(
        description="each tile's size in the composite; larger keeps small print legible and costs more CPU")] = \
        "640x360"
    second_officer: Annotated[UserName | None, Field(
        description="the case member (an investigator) who confirms the capture with their own login")] = None


class OfficerPublic(BaseModel):
    user: str
    confirmed_at: datetime | None = None


class CapturePublic(BaseModel):
    id: str
    case_id: str
    state: Literal["queued", "starting", "recording", "finalizing", "preserving", "complete", "partial", "failed",
                   "interrupted"]
    reason: str
    urls: list[str]
    duration: float | None
    fps: int
    layout: str
    tile_size: str
    tiles: int
    operator: str
    second_officer: OfficerPublic | None = Field(
        default=None, description="null: the capture was launched without a second officer")
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    worker: str | None
    heartbeat_at: datetime | None
    progress: dict[str, Any] | None = Field(default=None, description="phase, seconds recorded, segments "
                                                                       "chained, per-tile state, steps")
    summary: dict[str, Any] | None = Field(default=None, description="the manifest summary, once it exists")
    manifest_sha256: str | None
    note: str = ""
