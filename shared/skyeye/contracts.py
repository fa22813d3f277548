"""Messages that cross a process boundary: Kafka payloads and what the inference app returns.

Two Kafka contracts:
- :class:`ObjectEvent`: MinIO's own bucket-notification JSON (the ``notify_kafka`` format), which
  the local ``skyeye ingest`` also emits because nanio sends no notifications;
- :class:`WorkItem`: one tile of one asset (or the overview of a whole scene, or sampled frames
  of a clip), produced by the planner and consumed by the worker.

And one S3 contract: where an asset's preview JPEG is stored (:func:`preview_key_for`), and
what a stored preview's media type is (:func:`preview_media_type`).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import quote, unquote_plus

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "MAX_CLIP_FRAMES",
    "AlertData",
    "AlertEvidence",
    "AlertMessage",
    "ClipFrame",
    "DeadLetterHeader",
    "EventRecord",
    "FrameGeoref",
    "InvalidEvent",
    "ObjectEvent",
    "ScenePlan",
    "Task",
    "TaskKind",
    "Tile",
    "WorkItem",
    "WorkItemKind",
    "asset_id_for",
    "dead_letter_id_for",
    "first_error",
    "minio_created_event",
    "object_key_problem",
    "preview_key_for",
    "work_item_id_for",
]

# Fixed namespace: asset ids are a pure function of the object version, so the same object
# version always maps to the same asset, whichever process sees it first.
_ASSET_NAMESPACE = uuid.UUID("5b0f6a53-6c1e-4b55-9d53-3f5d2b8f0a11")

# S3's own limit on an object key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024

# The clip caption shows the model every sampled frame at once: 12 frames of 256 image tokens
# plus the prompt still fit Llama-2's 4,096-token context.
MAX_CLIP_FRAMES = 12


class InvalidEvent(ValueError):
    """A Kafka message that is not a usable object-created event."""


class _Minio(BaseModel):
    # MinIO adds fields over time; ignore what we do not use rather than reject the event.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class S3Bucket(_Minio):
    name: str = Field(min_length=1)


class S3Object(_Minio):
    key: str = Field(min_length=1, description="URL-encoded, as MinIO sends it")
    size: int | None = Field(None, ge=0)
    e_tag: str | None = Field(None, alias="eTag")
    content_type: str | None = Field(None, alias="contentType")
    user_metadata: dict[str, str] = Field(default_factory=dict, alias="userMetadata")
    version_id: str | None = Field(None, alias="versionId")
    sequencer: str | None = None

    @property
    def decoded_key(self) -> str:
        return unquote_plus(self.key)


class S3Entity(_Minio):
    bucket: S3Bucket
    object: S3Object


class EventRecord(_Minio):
    """One S3 event of a notification: its name, when it happened, and the bucket and object."""

    event_name: str = Field(alias="eventName")
    event_time: str | None = Field(None, alias="eventTime")
    s3: S3Entity


class ObjectEvent(_Minio):
    """A MinIO bucket notification as its Kafka target publishes it: one message per event."""

    event_name: str = Field(alias="EventName")
    key: str = Field(alias="Key")
    records: list[EventRecord] = Field(alias="Records", min_length=1)

    @property
    def is_object_created(self) -> bool:
        """Whether an object was written (``s3:ObjectCreated:*``); the planner skips the rest."""
        return self.event_name.startswith("s3:ObjectCreated:")

    @classmethod
    def parse(cls, raw: bytes, *, max_bytes: int) -> ObjectEvent:
        """Decode a Kafka message value; any defect becomes :class:`InvalidEvent`."""
        if len(raw) > max_bytes:
            raise InvalidEvent(f"event of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise InvalidEvent(f"malformed object event at {first_error(exc, 'message')}") from exc


class Tile(BaseModel):
    """A pixel window of an asset: the whole image, a scene tile, or a whole scene (overview)."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class TaskKind(StrEnum):
    """What a task asks; ``Task.text`` holds what follows the kind's tag (see skyeye.tasks)."""

    CAPTION = "caption"
    GROUNDING = "grounding"
    VQA = "vqa"
    # text: the whole untagged instruction, e.g. "Describe this image in detail."
    DESCRIBE = "describe"
    # text: a referring expression; the answer is one box
    REFER = "refer"
    # text: a pixel box "x1,y1,x2,y2" on the original image; the answer describes what is in it
    IDENTIFY = "identify"
    # text: the class list, comma-separated; the answer is one of them
    CLASSIFY = "classify"
    # text: a question answered "yes" or "no"
    YES_NO = "yes_no"
    # text: a "how many" question; the answer is a number
    COUNT = "count"
    # text: a caption request asked once about all of a clip's sampled frames, in time order
    VIDEO = "video"


class Task(BaseModel):
    """One thing to ask the model about a work item's image: a kind and its text."""

    model_config = ConfigDict(frozen=True)

    kind: TaskKind
    text: str = Field(min_length=1)

    @property
    def key(self) -> str:
        """Stable identity of the task within a work item (idempotent result writes)."""
        digest = hashlib.sha256(f"{self.kind}\0{self.text}".encode()).hexdigest()[:16]
        return f"{self.kind}:{digest}"


class ScenePlan(BaseModel):
    """How a georeferenced scene was cut and is to be read: the worker rebuilds its tile from it."""

    model_config = ConfigDict(frozen=True)

    crs: str = Field(min_length=1)
    tile_size: int = Field(gt=0)
    target_gsd: float | None = Field(None, gt=0)
    overlap: int = Field(ge=0)
    bands: tuple[int, int, int]
    stretch_low: tuple[float, float, float]
    stretch_high: tuple[float, float, float]


class FrameGeoref(BaseModel):
    """Where a clip frame lies on the ground: frame pixel (col, row) -> CRS coordinates.

    ``matrix`` is a row-major 3x3 homography ``(x w, y w, w) = M (col, row, 1)``: a camera
    footprint's four corners need a projective map; an affine transform is its special case
    with the last row ``0, 0, 1``.
    """

    model_config = ConfigDict(frozen=True)

    crs: str = Field(min_length=1)
    matrix: tuple[float, float, float, float, float, float, float, float, float]


class ClipFrame(BaseModel):
    """One sampled frame of a clip, extracted by the planner to an image object."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0, description="order among the clip's sampled frames")
    time_s: float = Field(ge=0, description="presentation time from the clip's start")
    bucket: str = Field(min_length=1)
    key: str = Field(min_length=1)
    georef: FrameGeoref | None = None


class WorkItemKind(StrEnum):
    """What a work item shows the model."""

    TILE = "tile"  # one model-sized tile of an image or scene
    # the whole scene read at the tile size on its long side: scene-level tasks (caption)
    OVERVIEW = "overview"
    FRAME = "frame"  # one sampled frame of a clip
    CLIP = "clip"  # every sampled frame of a clip at once: the clip caption


class WorkItem(BaseModel):
    """The planner's order to the worker: which pixels of which object, and what to ask of them."""

    work_item_id: uuid.UUID
    kind: WorkItemKind = WorkItemKind.TILE
    asset_id: uuid.UUID
    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    image_width: int = Field(gt=0)
    image_height: int = Field(gt=0)
    tile: Tile
    scene: ScenePlan | None = Field(None, description="set for georeferenced scenes")
    frames: list[ClipFrame] = Field(
        default_factory=list,
        max_length=MAX_CLIP_FRAMES,
        description="clips: the frames shown to the model, in time order (one for a frame "
        "item, every sampled frame for the clip item); the tile is the whole frame",
    )
    tasks: list[Task] = Field(min_length=1)
    bbox: tuple[float, float, float, float] | None = Field(
        None,
        description="lon/lat bounds (west, south, east, north) of what the item shows, when it "
        "is placed on the ground; west > east across the antimeridian",
    )

    @model_validator(mode="after")
    def _frames_match_kind(self) -> WorkItem:
        count = len(self.frames)
        if self.kind is WorkItemKind.FRAME and count != 1:
            raise ValueError(f"a frame item shows exactly one frame, not {count}")
        if self.kind is WorkItemKind.CLIP and count == 0:
            raise ValueError("a clip item shows at least one frame")
        if self.kind in (WorkItemKind.TILE, WorkItemKind.OVERVIEW) and count:
            raise ValueError(f"a {self.kind} item shows no clip frames, not {count}")
        return self

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[Task]) -> list[Task]:
        keys = [t.key for t in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate tasks in one work item")
        return tasks


def first_error(exc: ValidationError, whole: str) -> str:
    """``where: what`` of a validation's first error, for a one-line error row.

    ``whole`` names the document when the error is about all of it.
    """
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    # a validator's own message needs no "Value error, " in front of it
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


class DeadLetterHeader(StrEnum):
    """Kafka headers that dead-lettering and replays add to a message.

    A consumer adds them to the copy of a message it gives up on, on the dead-letter topic
    (after the original headers, which it keeps); a replay adds its own one.
    """

    ID = "skyeye-dead-letter-id"
    STAGE = "skyeye-error-stage"
    KIND = "skyeye-error-kind"
    MESSAGE = "skyeye-error-message"
    TOPIC = "skyeye-original-topic"
    PARTITION = "skyeye-original-partition"
    OFFSET = "skyeye-original-offset"
    FAILED_AT = "skyeye-failed-at"
    # on a message re-published by `skyeye dlq replay`: the dead letter it replays
    REPLAY_OF = "skyeye-replay-of"


_DEAD_LETTER_NAMESPACE = uuid.UUID("0c5e2f7a-9b1d-4e36-8a43-6f2d9e1b7c55")


def dead_letter_id_for(topic: str, partition: int, offset: int) -> uuid.UUID:
    """One id per message, so a poison message redelivered after a crash is one dead letter."""
    return uuid.uuid5(_DEAD_LETTER_NAMESPACE, f"{topic}/{partition}/{offset}")


def object_key_problem(key: str) -> str | None:
    """Why an object key is refused, or None.

    Keys become log lines, rows and later file names, so the planner, the reconciler and
    ``skyeye ingest`` refuse the same keys for the same reason.
    """
    if not key:
        return "the object key is empty"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"the object key is longer than {MAX_KEY_BYTES} bytes (S3's limit)"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "the object key contains control characters"
    if key.startswith("/") or any(part in {"", ".", ".."} for part in key.split("/")):
        return "the object key has an empty, '.' or '..' path segment"
    return None


def asset_id_for(bucket: str, key: str, version: str | None) -> uuid.UUID:
    """Deterministic asset id of one object version (version id, else eTag)."""
    return uuid.uuid5(_ASSET_NAMESPACE, f"{bucket}/{key}@{version or ''}")


def work_item_id_for(
    asset_id: uuid.UUID, tile_index: int, kind: WorkItemKind = WorkItemKind.TILE
) -> uuid.UUID:
    """Deterministic id of an asset's work item, so a redelivered event plans the same items."""
    return uuid.uuid5(asset_id, f"{kind}/{tile_index}")


# Previews are photographs with boxes drawn: JPEG is 50x faster to write than PNG and a tenth
# of its size. Assets finished before previews were JPEG keep their PNG, under its own suffix.
PREVIEW_MEDIA_TYPE = "image/jpeg"
_PREVIEW_MEDIA_TYPES = {
    ".jpg": PREVIEW_MEDIA_TYPE,
    ".jpeg": PREVIEW_MEDIA_TYPE,
    ".png": "image/png",
}


def preview_key_for(asset_id: uuid.UUID) -> str:
    """Object key of an asset's preview JPEG in the derived bucket (beside the clip frames).

    Built only from the asset id (a UUID), so no part of the user's object key reaches it.
    """
    return f"previews/{asset_id}.jpg"


def preview_media_type(key: str) -> str | None:
    """The media type of a stored preview, from its key's suffix; None for an unknown one."""
    return _PREVIEW_MEDIA_TYPES.get(PurePosixPath(key).suffix.lower())


def minio_created_event(
    *,
    bucket: str,
    key: str,
    size: int,
    etag: str,
    content_type: str,
    metadata: dict[str, str],
    version_id: str | None = None,
    principal: str = "skyeye-ingest",
) -> dict[str, object]:
    """An ``s3:ObjectCreated:Put`` notification exactly as MinIO's Kafka target shapes it.

    nanio sends no notifications, so the local ingest path emits this itself; empty fields are
    omitted as MinIO omits them, so consumers see the same shapes in both worlds.
    """
    now = datetime.now(UTC)
    obj: dict[str, object] = {"key": quote(key, safe=""), "sequencer": f"{time.time_ns():X}"}
    if size:
        obj["size"] = size
    if etag:
        obj["eTag"] = etag
    if content_type:
        obj["contentType"] = content_type
    user_metadata = {f"X-Amz-Meta-{k.title()}": v for k, v in metadata.items()}
    if content_type:
        user_metadata["content-type"] = content_type
    if user_metadata:
        obj["userMetadata"] = user_metadata
    if version_id:
        obj["versionId"] = version_id
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "eventName": "s3:ObjectCreated:Put",
        "userIdentity": {"principalId": principal},
        "requestParameters": {"principalId": principal, "region": "", "sourceIPAddress": ""},
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": principal},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
        "source": {"host": "", "port": "", "userAgent": "skyeye-stream"},
    }
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [record]}


class AlertEvidence(BaseModel):
    """What made a rule fire on one tile or frame: a detection, a matching text, an answer."""

    tile_index: int = Field(description="the tile's (a clip: the frame's) index; -1: the whole")
    item_kind: str = Field(description="tile, overview, frame or clip")
    result_id: int
    task_kind: str
    text: str = Field(description="the detection's label, the matching text or the answer")
    pixel_box: list[float] | None = Field(None, description="x1, y1, x2, y2 in image pixels")
    lon_lat_bbox: list[float] | None = Field(
        None,
        description="W, S, E, N on the ground (W > E across 180 degrees), where placed: a"
        " detection's own, the tile's or frame's for a text or an answer",
    )


class AlertData(BaseModel):
    """An alert's content: the rule, the asset and the evidence."""

    alert_id: uuid.UUID
    rule_id: uuid.UUID
    rule_name: str
    asset_id: uuid.UUID
    bucket: str
    object_key: str
    asset_bbox: list[float] | None = Field(None, description="the asset's lon/lat bounds")
    evidence: list[AlertEvidence]


class AlertMessage(BaseModel):
    """An alert as topic ``skyeye.alerts`` carries it and webhooks receive it.

    The envelope Standard Webhooks recommends: ``type``, ``timestamp``, ``data``. The Kafka
    message's key is the rule id and its ``message-id`` header the alert id; a webhook delivery's
    ``webhook-id`` is the alert id too, so a receiver can drop a repeat.
    """

    type: Literal["alert.fired"] = "alert.fired"
    timestamp: datetime
    data: AlertData
