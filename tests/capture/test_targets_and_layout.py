"""Capture targets: parsed as the browser parses them, every address checked, allowlists by network."""

from collections.abc import Sequence
from pathlib import Path

import pytest

from capture.browser import chromium_flags
from capture.layout import TILE_SIZES, build_layout, grid_shape
from capture.targets import TargetPolicy, parse_target, validate_targets, validate_url
from evidence import ConfigurationError, TargetRefused, UsageError

STRICT = TargetPolicy()
ALL_PRIVATE = TargetPolicy(allow_private=True)


def resolver(answers: dict[str, Sequence[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str) -> Sequence[str]:
        if host not in answers:
            raise OSError(f"{host}: Name or service not known")
        return answers[host]
    return resolve


PUBLIC = resolver({"shop.example": ["93.184.216.34"], "mixed.example": ["93.184.216.34", "10.0.0.7"],
                   "v6.example": ["2606:2800:220:1:248:1893:25c8:1946"]})


@pytest.mark.parametrize("url", ["ftp://example.com/", "example.com", "http://", "javascript:alert(1)", "http://a:x/",
                                 "http://exa mple.com/", "http://shop.example/\n", "data:text/html,x", ""])
def test_malformed_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        validate_url(url, policy=STRICT, resolver=PUBLIC)


@pytest.mark.parametrize(
    "url", [
        "http://127.0.0.1/", "http://localhost:8080/", "http://10.1.2.3/", "http://192.168.0.1/",
        "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://0.0.0.0/", "http://100.64.1.1/",
        # The forms that got past the first check: *.localhost, trailing dots, percent-encoding, a backslash
        "http://foo.localhost:8080/", "http://localhost.:8080/", "http://127.0.0.1.:8080/",
        "http://%31%32%37.0.0.1:8080/", "http://127.0.0.1:8080\\@x.invalid/",
        # IPv4 spelled otherwise, and IPv4 inside IPv6
        "http://2130706433/", "http://0x7f.1/", "http://0177.0.0.1/", "http://127.1/",
        "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/", "http://[64:ff9b::a00:1]/",
        "http://[2002:7f00:1::]/", "http://[fe80::1]/", "http://[fd00::1]/", "http://[::]/",
    ],
)
def test_private_and_disguised_targets_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        validate_url(url, policy=STRICT, resolver=PUBLIC)


def test_every_address_of_a_name_must_be_allowed() -> None:
    assert validate_url("http://shop.example/a", policy=STRICT, resolver=PUBLIC).addresses == ("93.184.216.34",)
    assert validate_url("https://v6.example/", policy=STRICT, resolver=PUBLIC).port == 443
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.7 is a private address"):
        validate_url("http://mixed.example/", policy=STRICT, resolver=PUBLIC)


def test_a_name_that_does_not_resolve_is_not_allowed() -> None:
    with pytest.raises(TargetRefused, match="does not resolve"):
        validate_url("http://nowhere.example/", policy=STRICT, resolver=PUBLIC)
    with pytest.raises(TargetRefused, match="no address"):
        validate_url("http://empty.example/", policy=STRICT, resolver=resolver({"empty.example": []}))


def test_urls_are_handed_on_in_the_browsers_canonical_form() -> None:
    target = parse_target("HTTP://Shop.Example:80/a/../b?q=1#frag")
    assert (target.url, target.host, target.port) == ("http://shop.example/b?q=1#frag", "shop.example", 80)
    assert parse_target("http://例子.cn/").host == "xn--fsqu00a.cn"
    with pytest.raises(TargetRefused, match="passwords"):
        parse_target("http://user:secret@shop.example/")


def test_allowlisted_networks_allow_exactly_those_addresses() -> None:
    policy = TargetPolicy.from_settings("127.0.0.2/32, fd00:1::/64", allow_private=False)
    two = resolver({"two.test": ["127.0.0.2"], "one.test": ["127.0.0.1"]})
    assert validate_url("http://two.test:8080/", policy=policy, resolver=two).addresses == ("127.0.0.2",)
    assert validate_url("http://[fd00:1::5]/", policy=policy, resolver=two).host == "fd00:1::5"
    with pytest.raises(TargetRefused, match=r"127\.0\.0\.1 is a loopback address"):
        validate_url("http://one.test/", policy=policy, resolver=two)
    with pytest.raises(TargetRefused):
        validate_url("http://localhost/", policy=policy, resolver=two)
    with pytest.raises(ConfigurationError, match="CIDR"):
        TargetPolicy.from_settings("10.0.0.0/33", allow_private=False)


def test_allow_private_allows_every_local_address() -> None:
    for url in ("http://127.0.0.1/", "http://localhost:8080/", "http://[::1]/", "http://10.1.2.3/"):
        assert validate_url(url, policy=ALL_PRIVATE, resolver=system_like)


def system_like(host: str) -> Sequence[str]:
    return {"localhost": ["127.0.0.1", "::1"]}[host]


def test_one_to_nine_urls() -> None:
    with pytest.raises(UsageError):
        validate_targets([], policy=ALL_PRIVATE)
    with pytest.raises(UsageError, match="at most 9"):
        validate_targets([f"http://127.0.0.1/{i}" for i in range(10)], policy=ALL_PRIVATE)


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


@pytest.mark.parametrize("size", list(TILE_SIZES))
@pytest.mark.parametrize("count", range(1, 10))
def test_every_tile_size_places_windows_on_whole_css_pixels(size: str, count: int) -> None:
    """A window is placed in CSS px: a tile edge between two CSS px would shift the page against its label by a
    pixel; and yuv420p needs an even composite."""
    layout = build_layout([f"http://127.0.0.1/{i}" for i in range(count)], size=size)
    width, height = TILE_SIZES[size]
    scale = width / 1280
    assert layout.width % 2 == 0 and layout.height % 2 == 0
    for tile in layout.tiles:
        assert (tile.rect.width, tile.rect.height) == (width, height)
        for edge in (tile.rect.x, tile.rect.y):
            assert (edge / scale).is_integer(), (size, tile.tile, edge)
        assert f"--window-position={round(tile.rect.x / scale)},{round(tile.rect.y / scale)}" in chromium_flags(
            tile.rect, Path("/nonexistent"))
        assert f"--force-device-scale-factor={scale:g}" in chromium_flags(tile.rect, Path("/nonexistent"))


def test_an_unknown_tile_size_is_refused_by_name() -> None:
    with pytest.raises(UsageError, match="640x360, 960x540, 1280x720"):
        build_layout(["http://127.0.0.1/"], size="4096x2160")
