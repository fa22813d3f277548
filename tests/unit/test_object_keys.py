import json

import pytest

from skyeye.contracts import asset_id_for, minio_created_event, preview_key_for
from skyeye.services.planner import Planner, _key_problem
from skyeye.settings import Settings


@pytest.mark.parametrize("key", ["a.jpg", "scenes/2026/11/26/S2B.tif", "with space/ü.png"])
def test_ordinary_keys_pass(key: str) -> None:
    assert _key_problem(key) is None


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
    problem = _key_problem(key)
    assert problem is not None and why in problem


def test_the_workers_own_previews_are_not_planned() -> None:
    # every collaborator is missing: planning would fail on the first use of any of them
    planner = Planner(Settings(), engine=None, store=None, producer=None)  # type: ignore[arg-type]
    key = preview_key_for(asset_id_for("incoming", "scene.tif", "v1"))
    event = minio_created_event(
        bucket="incoming", key=key, size=10, etag="e", content_type="image/png", metadata={}
    )
    planner.handle(json.dumps(event).encode(), "test")
