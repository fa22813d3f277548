import pytest

from skyeye.contracts import object_key_problem


@pytest.mark.parametrize("key", ["a.jpg", "scenes/2026/11/26/S2B.tif", "with space/ü.png"])
def test_ordinary_keys_pass(key: str) -> None:
    assert object_key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("../../etc/passwd", "'..'"),
        ("a//b.jpg", "empty"),
        ("/abs.jpg", "empty"),
        ("evil\x00.jpg", "control"),
        ("line\nbreak.jpg", "control"),
        ("k" * 1025, "longer"),
    ],
)
def test_hostile_keys_are_refused(key: str, why: str) -> None:
    problem = object_key_problem(key)
    assert problem is not None and why in problem
