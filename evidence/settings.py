"""One place for configuration: environment variables prefixed WZ_."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "wangzheng"


class Settings(BaseSettings):
    """Settings for every Wangzheng command, read from `WZ_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="WZ_", frozen=True, extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    capture_allow_private: bool = Field(
        default=False,
        description="Allow every loopback, private and link-local address (demo and tests only).",
    )
    capture_allow_networks: str = Field(
        default="",
        description="Networks (CIDR, comma-separated) the capture browsers may reach besides global addresses, "
        "e.g. an intranet under investigation: 10.20.0.0/16,fd00:1::/64.",
    )
    max_duration_seconds: float = Field(default=4 * 3600.0, gt=0)
    ntp_server: str = "ntp.ntsc.ac.cn"
    ntp_timeout_seconds: float = Field(default=3.0, gt=0)
    chromium: str = "chromium"
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    xvfb: str = "Xvfb"
    pulseaudio: str = "pulseaudio"
    fps: int = Field(default=15, ge=1, le=30)
    segment_seconds: int = Field(default=5, ge=1, le=10)
    load_timeout_seconds: float = Field(default=20.0, gt=0)
    stream_copy: bool = Field(default=True, description="Copy the original media streams a page plays.")
    capture_ca_file: str = Field(
        default="",
        description="PEM bundle of extra roots the capture browser trusts (an organisation's CA, a TLS-inspecting "
        "proxy); recorded in the provenance. Empty: Chromium's built-in roots only.",
    )

    # -- integrity and preservation (RFC 3161, S3 Object Lock, custody) --
    tsa_urls: str = Field(default="", description="Comma-separated RFC 3161 TSA URLs; empty: the local TSA.")
    tsa_timeout_seconds: float = Field(default=15.0, gt=0)
    tsa_ca_file: str = Field(default="", description="PEM bundle of the roots trusted for the external TSAs.")
    segment_stamp_seconds: float = Field(default=60.0, gt=0)
    s3_endpoint: str = Field(default="", description="host:port of an S3 server; empty: the embedded SeaweedFS.")
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "wangzheng-evidence"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    retention_days: int = Field(default=3650, ge=1)
    unsafe_allow_bucket_without_object_lock: bool = Field(
        default=False,
        description="UNSAFE: store into a bucket without Object Lock (objects could then be deleted).",
    )
    embedded_s3_port: int = Field(default=8333, ge=1, le=65535)
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the database (custody ledger, users, cases, jobs): postgresql+psycopg://... "
        "Empty: the embedded PostgreSQL under the data directory. sqlite:///FILE holds a ledger only.",
    )
    embedded_db_port: int = Field(
        default=5432, ge=1, le=65535,
        description="Names the embedded PostgreSQL's Unix socket (it listens on no TCP port).",
    )
    actor: str = Field(default="", description="Who acts, for the custody ledger; default: the login name.")

    # -- the custody service (wz serve, wz worker) --
    secret_key: str = Field(
        default="",
        description="Signs the service's login tokens. Empty: a random key kept in the data directory, accepted "
        "only when the service listens on loopback.",
    )
    access_token_minutes: int = Field(default=60, ge=1, le=24 * 60)
    login_max_failures: int = Field(default=5, ge=1, description="Failed logins before an account is locked.")
    login_lock_minutes: int = Field(default=15, ge=1)
    hash_lookups_per_minute: int = Field(default=30, ge=1, description="Per client, on the public hash check.")
    max_package_upload_bytes: int = Field(default=4 << 30, ge=1 << 20,
                                          description="Largest package POST /verify/package accepts.")
    public_url: str = Field(
        default="", pattern=r"^(https?://[^\s?#]+)?$",
        description="Where people reach the viewer (https://evidence.example.gov.cn/): the evidence report's QR "
        "code opens its hash check there. Empty: the address the report was asked for at.",
    )

    @property
    def tsa_url_list(self) -> list[str]:
        return [url.strip() for url in self.tsa_urls.split(",") if url.strip()]

    @property
    def keys_dir(self) -> Path:
        """The node's local CA, evidence-signing key and local TSA key."""
        return self.data_dir / "keys"

    @property
    def registry_dir(self) -> Path:
        """One file per capture naming its directory, wherever --out put it."""
        return self.data_dir / "registry"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def services_dir(self) -> Path:
        return self.data_dir / "services"

    @property
    def legacy_ledger_path(self) -> Path:
        """Where the ledger was kept (SQLite) before the embedded PostgreSQL; moved there on first start."""
        return self.data_dir / "custody.sqlite3"

    @property
    def captures_dir(self) -> Path:
        return self.data_dir / "captures"

    @property
    def active_dir(self) -> Path:
        """Markers of captures in progress, so a later command can finish an interrupted one."""
        return self.data_dir / "active"

    @property
    def fixtures_dir(self) -> Path:
        return self.data_dir / "fixtures"
