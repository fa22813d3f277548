import json
import re
import uuid
from pathlib import Path

import pytest

from skyeye.adapters.postgres import migrations
from skyeye.contracts import (
    InvalidEvent,
    ObjectEvent,
    Task,
    TaskKind,
    Tile,
    WorkItem,
    WorkItemKind,
    asset_id_for,
    minio_created_event,
    preview_key_for,
    preview_media_type,
    work_item_id_for,
)

SAMPLE = Path(__file__).parent.parent / "data" / "minio_put_event.json"


def test_parses_minio_put_event_sample() -> None:
    event = ObjectEvent.parse(SAMPLE.read_bytes(), max_bytes=1 << 20)
    assert event.is_object_created
    record = event.records[0]
    assert record.s3.bucket.name == "incoming"
    assert record.s3.object.decoded_key == "scenes/2026/11/26/S2B_T33UUP_20261126T101029.tif"
    assert record.s3.object.size == 241172480
    assert record.s3.object.e_tag == "5f0c7f0e9d2b4a0c8e5c9a3b7d1e2f40-46"
    assert record.s3.object.version_id == ""
    assert record.s3.object.user_metadata["X-Amz-Meta-Sensor"] == "sentinel-2b"


def test_multipart_and_plus_encoded_key() -> None:
    raw = json.loads(SAMPLE.read_text())
    raw["EventName"] = "s3:ObjectCreated:CompleteMultipartUpload"
    raw["Records"][0]["s3"]["object"]["key"] = "my+scene%282%29.tif"
    event = ObjectEvent.parse(json.dumps(raw).encode(), max_bytes=1 << 20)
    assert event.is_object_created
    assert event.records[0].s3.object.decoded_key == "my scene(2).tif"


def test_minio_omits_empty_fields() -> None:
    raw = json.loads(SAMPLE.read_text())
    obj = raw["Records"][0]["s3"]["object"]
    for field in ("size", "eTag", "contentType", "userMetadata", "versionId"):
        obj.pop(field)
    event = ObjectEvent.parse(json.dumps(raw).encode(), max_bytes=1 << 20)
    assert event.records[0].s3.object.size is None
    assert event.records[0].s3.object.user_metadata == {}


def test_removal_is_not_object_created() -> None:
    raw = json.loads(SAMPLE.read_text())
    raw["EventName"] = "s3:ObjectRemoved:Delete"
    assert not ObjectEvent.parse(json.dumps(raw).encode(), max_bytes=1 << 20).is_object_created


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"not json at all", "message"),
        (b"{}", "EventName"),
        (b'{"EventName": "s3:ObjectCreated:Put", "Key": "b/k", "Records": []}', "Records"),
        (
            b'{"EventName": "x", "Key": "b/k", "Records": [{"eventName": "x", "s3": {}}]}',
            "Records.0.s3.bucket",
        ),
    ],
)
def test_malformed_events_raise_invalid_event(raw: bytes, where: str) -> None:
    with pytest.raises(InvalidEvent, match=f"at {where}"):
        ObjectEvent.parse(raw, max_bytes=1 << 20)


def test_oversize_event_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidEvent, match="exceeds"):
        ObjectEvent.parse(b"{" + b" " * 100 + b"}", max_bytes=50)


def test_built_event_round_trips_with_minio_shape() -> None:
    built = minio_created_event(
        bucket="incoming",
        key="demo/a b+c.jpg",
        size=10,
        etag="abc",
        content_type="image/jpeg",
        metadata={"sensor": "uav-1"},
    )
    assert built["Key"] == "incoming/demo/a b+c.jpg"
    record = built["Records"][0]
    assert record["s3"]["object"]["key"] == "demo%2Fa%20b%2Bc.jpg"
    assert "versionId" not in record["s3"]["object"]
    assert record["eventTime"].endswith("Z") and len(record["eventTime"]) == 24
    event = ObjectEvent.parse(json.dumps(built).encode(), max_bytes=1 << 20)
    obj = event.records[0].s3.object
    assert obj.decoded_key == "demo/a b+c.jpg"
    assert obj.user_metadata["X-Amz-Meta-Sensor"] == "uav-1"


def test_asset_ids_are_deterministic_per_object_version() -> None:
    a = asset_id_for("incoming", "k.jpg", "v1")
    assert a == asset_id_for("incoming", "k.jpg", "v1")
    assert a != asset_id_for("incoming", "k.jpg", "v2")
    assert work_item_id_for(a, 0) != work_item_id_for(a, 1)


def test_work_item_rejects_duplicate_tasks() -> None:
    task = Task(kind=TaskKind.VQA, text="Is there water?")
    with pytest.raises(ValueError, match="duplicate"):
        WorkItem(
            work_item_id=work_item_id_for(asset_id_for("b", "k", None), 0),
            asset_id=asset_id_for("b", "k", None),
            bucket="b",
            key="k",
            image_width=4,
            image_height=4,
            tile=Tile(index=0, x=0, y=0, width=4, height=4),
            tasks=[task, task],
        )


def test_overview_items_have_their_own_ids_and_tile_ids_are_unchanged() -> None:
    a = asset_id_for("incoming", "scene.tif", "v1")
    # ids of already planned tiles must not move
    assert work_item_id_for(a, 3) == uuid.uuid5(a, "tile/3")
    assert work_item_id_for(a, 0, WorkItemKind.OVERVIEW) not in {work_item_id_for(a, 0)}
    item = WorkItem(
        work_item_id=work_item_id_for(a, 0, WorkItemKind.OVERVIEW),
        kind=WorkItemKind.OVERVIEW,
        asset_id=a,
        bucket="incoming",
        key="scene.tif",
        image_width=1000,
        image_height=700,
        tile=Tile(index=0, x=0, y=0, width=1000, height=700),
        tasks=[Task(kind=TaskKind.CAPTION, text="briefly describe the image")],
    )
    assert WorkItem.model_validate_json(item.model_dump_json()).kind is WorkItemKind.OVERVIEW
    # items from planners that predate kinds are tiles
    legacy = item.model_dump(mode="json")
    del legacy["kind"]
    assert WorkItem.model_validate(legacy).kind is WorkItemKind.TILE


def test_preview_keys_come_from_the_asset_id_alone() -> None:
    a = asset_id_for("incoming", "../../odd key?.tif", "v1")
    assert preview_key_for(a) == f"previews/{a}.jpg"
    assert preview_media_type(preview_key_for(a)) == "image/jpeg"
    # previews written before they were JPEG keep their PNG
    assert preview_media_type(f"previews/{a}.png") == "image/png"
    assert preview_media_type("previews/x.gif") is None


def test_the_schema_allows_every_work_item_kind() -> None:
    latest = [m.sql for m in migrations() if "work_items_kind_check" in m.sql][-1]
    allowed = set(re.findall(r"'(\w+)'", latest.split("kind IN")[-1].split(";")[0]))
    assert allowed == {kind.value for kind in WorkItemKind}
