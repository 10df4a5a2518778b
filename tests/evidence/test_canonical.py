import pytest

from evidence import UsageError
from evidence.canonical import canonical_json


def test_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "网证"], "c": {"z": 1.0, "y": 0.5}}) == (
        '{"a":[true,null,"网证"],"b":1,"c":{"y":0.5,"z":1}}'.encode()
    )


def test_same_value_same_bytes_whatever_the_order() -> None:
    assert canonical_json({"x": 1, "y": 2}) == canonical_json({"y": 2, "x": 1})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1: "a"}])
def test_refuses_what_json_cannot_say_exactly(bad: object) -> None:
    with pytest.raises(UsageError):
        canonical_json(bad)
