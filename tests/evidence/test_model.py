import pytest
from pydantic import ValidationError

from evidence import Artifact, ArtifactRole, Digests, Rect, Settings

DIGESTS = Digests(sha256="0" * 64, sm3="1" * 64)


def test_artifact_paths_stay_inside_the_capture() -> None:
    Artifact(path="tiles/1/video.mp4", role=ArtifactRole.TILE_VIDEO, media_type="video/mp4", size=1, digests=DIGESTS)
    for bad in ("/etc/passwd", "../x", "tiles/../../x", "a\\b"):
        with pytest.raises(ValidationError):
            Artifact(path=bad, role=ArtifactRole.LOG, media_type="text/plain", size=1, digests=DIGESTS)


def test_models_are_frozen() -> None:
    rect = Rect(x=0, y=0, width=10, height=10)
    with pytest.raises(ValidationError):
        rect.x = 5  # type: ignore[misc]


def test_digests_must_be_lowercase_hex() -> None:
    with pytest.raises(ValidationError):
        Digests(sha256="Z" * 64, sm3="1" * 64)


def test_settings_read_wz_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WZ_DATA_DIR", "/srv/wz")
    monkeypatch.setenv("WZ_CAPTURE_ALLOW_PRIVATE", "1")
    settings = Settings()
    assert str(settings.data_dir) == "/srv/wz"
    assert settings.capture_allow_private is True
    assert settings.max_duration_seconds == 4 * 3600
    assert settings.active_dir.name == "active"


def test_settings_refuse_values_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("WZ_SEGMENT_SECONDS", "0"), ("WZ_SEGMENT_SECONDS", "11"), ("WZ_FPS", "31"),
                        ("WZ_RETENTION_DAYS", "0"), ("WZ_EMBEDDED_S3_PORT", "70000")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(name)
