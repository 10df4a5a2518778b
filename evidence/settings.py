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
        description="Allow loopback, private and link-local targets (demo and tests only).",
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
