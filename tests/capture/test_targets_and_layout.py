import pytest

from capture.layout import build_layout, grid_shape
from capture.targets import validate_targets, validate_url
from evidence import TargetRefused, UsageError


@pytest.mark.parametrize("url", ["ftp://example.com/", "example.com", "http://", "javascript:alert(1)", "http://a:x/"])
def test_malformed_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        validate_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "http://localhost:8080/", "http://10.1.2.3/", "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data/", "http://[::1]/"],
)
def test_private_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(TargetRefused, match="WZ_CAPTURE_ALLOW_PRIVATE"):
        validate_url(url, allow_private=False)
    assert validate_url(url, allow_private=True) == url


def test_one_to_nine_urls() -> None:
    with pytest.raises(UsageError):
        validate_targets([], allow_private=True)
    with pytest.raises(UsageError, match="at most 9"):
        validate_targets([f"http://127.0.0.1/{i}" for i in range(10)], allow_private=True)


@pytest.mark.parametrize(("count", "shape"), [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)),
                                             (6, (2, 3)), (7, (3, 3)), (9, (3, 3))])
def test_auto_grid(count: int, shape: tuple[int, int]) -> None:
    assert grid_shape(count) == shape


def test_explicit_grid_must_fit() -> None:
    assert grid_shape(3, "1x3") == (1, 3)
    with pytest.raises(UsageError):
        grid_shape(4, "1x3")
    with pytest.raises(UsageError):
        grid_shape(2, "4x1")


def test_layout_rects_tile_the_composite_without_overlap() -> None:
    urls = [f"http://127.0.0.1/{i}" for i in range(4)]
    layout = build_layout(urls)
    assert (layout.width, layout.height) == (1280, 24 + 2 * 380)
    rects = [t.rect for t in layout.tiles]
    assert [r.as_list() for r in rects] == [[0, 44, 640, 360], [640, 44, 640, 360], [0, 424, 640, 360],
                                            [640, 424, 640, 360]]
    for tile in layout.tiles:
        assert tile.label_rect.y + tile.label_rect.height == tile.rect.y
        assert tile.rect.x + tile.rect.width <= layout.width and tile.rect.y + tile.rect.height <= layout.height
    assert layout.width % 2 == 0 and layout.height % 2 == 0  # yuv420p needs even sizes
