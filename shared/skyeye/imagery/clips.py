"""UAV clips: probe a video, sample frames from it, and place its frames on the ground.

Decoding streams through PyAV (FFmpeg) from any seekable binary file, in the pipeline the S3
adapter's range-read file, so only the container index and the packets a sample needs are
fetched, and one decoded frame is in memory at a time. The limits in
:class:`skyeye.settings.ClipSettings` are checked from the header before any frame is decoded
(duration, frame size) and while decoding (frames decoded, all passes of one clip together); a
clip over them, or one FFmpeg cannot read, is an :class:`UnreadableClip`.

Decisions, documented once here:

- **Uniform sampling**: ``n`` frames at the centres of ``n`` equal spans of the clip
  (``(i + 0.5) * duration / n``), so neither the often black first frame nor a partial last GOP
  is picked; each sample is the frame shown at its time (the last presented at or before it),
  reached by seeking to the keyframe before it and decoding forward.
- **Scene changes** (``clips.scene_changes``): one sequential pass scores every frame by the mean
  absolute difference of its 64 x 64 RGB thumbnail from the previous frame's, 0-1; a frame
  scoring at least ``clips.scene_threshold`` starts a new shot. The strongest cuts are sampled
  first, at most ``n``, no two closer than ``duration / (2 n)`` (a dissolve scores on several
  consecutive frames); the remaining samples are the uniform times farthest from what is already
  chosen. A hard cut scores about the colour difference of the two shots; camera motion over
  texture stays far lower, because the thumbnail averages it away.
- **Sidecar** (``<clip key>.geo.json``): per-frame camera footprint corners in lon/lat, or an
  affine transform in a CRS; a sampled frame takes the entry nearest its time (docs/imagery.md).
  Corners either side of the antimeridian are read the short way across it (179.9 then -179.9
  is 0.2 degrees wide), and the footprint is split there like any other
  (:mod:`skyeye.imagery.geo`). A transform that gives the frame no area on the ground is refused
  when the sidecar is parsed; a frame whose CRS cannot be put on the globe raises
  :class:`skyeye.imagery.geo.InvalidGeoreference`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import BinaryIO, Literal

import av
import numpy as np
from av.container import InputContainer
from av.video.stream import VideoStream
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rasterio.crs import CRS
from rasterio.errors import CRSError

from skyeye.catalog import TaskOutcome
from skyeye.contracts import FrameGeoref, first_error
from skyeye.imagery import geo
from skyeye.settings import ClipSettings

__all__ = [
    "CLIP_SUFFIXES",
    "SIDECAR_SUFFIX",
    "ClipInfo",
    "InvalidSidecar",
    "SampledFrame",
    "Sidecar",
    "UnreadableClip",
    "choose_times",
    "end_time",
    "frame_footprint",
    "frame_ground",
    "georef_at",
    "is_clip_candidate",
    "is_sidecar",
    "locate",
    "open_clip",
    "parse_sidecar",
    "png_name",
    "probe",
    "sample",
    "scene_cuts",
    "sidecar_key",
    "start_time",
    "uniform_times",
]

CLIP_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts")
SIDECAR_SUFFIX = ".geo.json"
MAX_SIDECAR_BYTES = 16 * 1024**2
_THUMBNAIL = 64
# frame times are rationals turned into floats: equal times may differ in the last bits
_TIME_EPSILON_S = 1e-6
# user metadata keys (normalised: lower case, '-' as '_') naming when a clip starts
_START_KEYS = ("start_datetime", "start_time", "datetime")

SampledBy = Literal["uniform", "scene_change"]


class UnreadableClip(ValueError):
    """Not a video FFmpeg can read, a corrupt or truncated one, or one over the clip limits."""


class InvalidSidecar(ValueError):
    """A ``.geo.json`` sidecar that does not describe where the clip's frames are."""


@dataclass(frozen=True)
class ClipInfo:
    """What a clip's header says, read before any frame is decoded (the clip limits use it)."""

    media_format: str
    codec: str
    width: int
    height: int
    duration_s: float
    fps: float | None
    frame_count: int | None
    # the container's creation_time tag, when it has one
    creation_time: datetime | None


@dataclass(frozen=True)
class SampledFrame:
    """A decoded frame picked for the model: why it was picked, and the cut's score if a cut."""

    time_s: float
    image: np.ndarray  # H x W x 3 uint8
    sampled_by: SampledBy
    scene_score: float | None = None


def is_clip_candidate(key: str, content_type: str | None) -> bool:
    """Whether an object is handled as a clip: a video suffix or a ``video/*`` content type."""
    return key.lower().endswith(CLIP_SUFFIXES) or (content_type or "").startswith("video/")


def is_sidecar(key: str) -> bool:
    """Whether an object is a clip's ``.geo.json`` sidecar rather than imagery of its own."""
    return key.lower().endswith(SIDECAR_SUFFIX)


def sidecar_key(clip_key: str) -> str:
    """The key a clip's sidecar is looked for under: beside the clip, ``.geo.json`` appended."""
    return clip_key + SIDECAR_SUFFIX


class _Budget:
    """Frames decoded for one clip, all passes together, refused past the limit.

    Without it a one-keyframe clip would decode from its start for every sample.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self) -> None:
        self.used += 1
        if self.used > self.limit:
            raise UnreadableClip(
                f"decoding the clip needs more than max_frames_decoded={self.limit} frames"
            )


@contextmanager
def open_clip(stream: BinaryIO) -> Iterator[InputContainer]:
    """The clip's container, closed on exit; unreadable or corrupt video is an UnreadableClip."""
    try:
        container = av.open(stream, mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        stream.seek(0)
        if not stream.read(1):
            raise UnreadableClip("the file is empty") from exc
        raise UnreadableClip(f"not a video FFmpeg can read: {_ffmpeg_message(exc)}") from exc
    try:
        yield container
    except av.FFmpegError as exc:
        raise UnreadableClip(f"the clip's video data is corrupt: {_ffmpeg_message(exc)}") from exc
    finally:
        container.close()


def _ffmpeg_message(exc: Exception) -> str:
    """FFmpeg's reason, without its error number and the name of the anonymous stream."""
    reason = getattr(exc, "strerror", None) or str(exc)
    if "Invalid data" in reason:
        reason += " (a truncated file, or not a video)"
    return reason


def _video(container: InputContainer) -> VideoStream:
    if not container.streams.video:
        raise UnreadableClip("the file has no video stream")
    return container.streams.video[0]


def _duration_s(container: InputContainer, video: VideoStream) -> float | None:
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _creation_time(tags: Mapping[str, str]) -> datetime | None:
    try:
        return datetime.fromisoformat(tags["creation_time"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


def probe(container: InputContainer, limits: ClipSettings, name: str = "") -> ClipInfo:
    """The clip's header, refusing it before any decoding when it is over the limits.

    ``name`` (the object key) picks the container's name among FFmpeg's aliases ("mov,mp4,...").
    """
    video = _video(container)
    width, height = video.codec_context.width, video.codec_context.height
    if width <= 0 or height <= 0:
        raise UnreadableClip(f"video stream has an empty frame size {width}x{height}")
    if width * height > limits.max_pixels:
        raise UnreadableClip(
            f"frames of {width}x{height} = {width * height} pixels exceed clips.max_pixels="
            f"{limits.max_pixels}"
        )
    duration = _duration_s(container, video)
    if duration is None or not duration > 0:
        raise UnreadableClip("the clip's header gives no duration")
    if duration > limits.max_duration_s:
        raise UnreadableClip(
            f"clip of {duration:.1f} s exceeds clips.max_duration_s={limits.max_duration_s:g}"
        )
    rate = video.average_rate or video.guessed_rate
    aliases = container.format.name.split(",")
    suffix = name.rsplit(".", 1)[-1].lower()
    return ClipInfo(
        media_format=suffix if suffix in aliases else aliases[0],
        codec=video.codec_context.name,
        width=width,
        height=height,
        duration_s=duration,
        fps=float(rate) if rate else None,
        frame_count=video.frames or None,
        creation_time=_creation_time(container.metadata) or _creation_time(video.metadata),
    )


def uniform_times(duration_s: float, count: int) -> list[float]:
    """The centres of ``count`` equal spans of the clip, in seconds (uniform sampling)."""
    return [(i + 0.5) * duration_s / count for i in range(count)]


def _thumbnail(frame: av.VideoFrame) -> np.ndarray:
    small = frame.reformat(width=_THUMBNAIL, height=_THUMBNAIL, format="rgb24")
    return small.to_ndarray().astype(np.float32) / 255


def scene_cuts(
    container: InputContainer, limits: ClipSettings, budget: _Budget | None = None
) -> list[tuple[float, float]]:
    """(time, score) of every frame that starts a new shot, from one pass over the clip."""
    budget = budget or _Budget(limits.max_frames_decoded)
    video = _video(container)
    container.seek(0)
    cuts, previous = [], None
    for frame in container.decode(video):
        budget.take()
        thumbnail = _thumbnail(frame)
        if previous is not None and frame.time is not None:
            score = float(np.mean(np.abs(thumbnail - previous)))
            if score >= limits.scene_threshold:
                cuts.append((frame.time, score))
        previous = thumbnail
    return cuts


def choose_times(
    duration_s: float, count: int, cuts: Sequence[tuple[float, float]] = ()
) -> list[tuple[float, SampledBy, float | None]]:
    """The times to sample, in order: strongest cuts first (spaced), uniform times filling up."""
    gap = duration_s / (2 * count)
    chosen: list[tuple[float, SampledBy, float | None]] = []
    for time_s, score in sorted(cuts, key=lambda c: (-c[1], c[0])):
        if len(chosen) == count:
            break
        if all(abs(time_s - t) >= gap for t, _, _ in chosen):
            chosen.append((time_s, "scene_change", score))
    fill = uniform_times(duration_s, count)
    while len(chosen) < count:
        # the uniform time farthest from every time chosen so far (earliest on a tie)
        best = max(fill, key=lambda u: (min((abs(u - t) for t, _, _ in chosen), default=0), -u))
        fill.remove(best)
        chosen.append((best, "uniform", None))
    return sorted(chosen, key=lambda c: c[0])


def _frame_at(
    container: InputContainer, video: VideoStream, time_s: float, period: float, budget: _Budget
) -> av.VideoFrame:
    """The frame shown at ``time_s``: the last one presented at or before it."""
    assert video.time_base is not None
    container.seek(int(time_s / video.time_base), stream=video, backward=True)
    shown = None
    for frame in container.decode(video):
        budget.take()
        if frame.time is None:
            continue
        if frame.time > time_s + _TIME_EPSILON_S:
            return shown or frame
        shown = frame
    # the last frame is shown for one period; a clip whose frames stop earlier is cut short
    if shown is not None and time_s < shown.time + period:
        return shown
    raise UnreadableClip(f"the clip's frames end before {time_s:.3f} s (truncated?)")


def sample(
    container: InputContainer, info: ClipInfo, limits: ClipSettings
) -> Iterator[SampledFrame]:
    """The sampled frames in time order, one decoded at a time.

    The same frame reached from two sample times is given once.
    """
    budget = _Budget(limits.max_frames_decoded)
    cuts = scene_cuts(container, limits, budget) if limits.scene_changes else []
    video = _video(container)
    period = 1 / info.fps if info.fps else 1.0
    seen = set()
    for time_s, sampled_by, score in choose_times(info.duration_s, limits.frames, cuts):
        frame = _frame_at(container, video, time_s, period, budget)
        if frame.time in seen:
            continue
        seen.add(frame.time)
        yield SampledFrame(frame.time, frame.to_ndarray(format="rgb24"), sampled_by, score)


def start_time(user_metadata: Mapping[str, str], info: ClipInfo) -> datetime | None:
    """When the clip starts: user metadata, else the container's creation time.

    The user metadata is set as ``--meta start-datetime=...``; a value that is not ISO 8601 is
    ignored.
    """
    for raw_key, value in user_metadata.items():
        key = raw_key.lower().removeprefix("x-amz-meta-").replace("-", "_")
        if key in _START_KEYS:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
    return info.creation_time


def end_time(start: datetime | None, info: ClipInfo) -> datetime | None:
    """When the clip ends, from its start and duration; ``None`` when its start is unknown."""
    return None if start is None else start + timedelta(seconds=info.duration_s)


# A transform whose columns are this close to parallel, relative to their size, maps the frame
# onto a line: no footprint.
_MIN_AREA_RATIO = 1e-12


def _unwrapped(corners: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
    """The corners with each longitude the short way from the first's.

    Across the antimeridian, 179.9 and -179.9 become 179.9 and 180.1.
    """
    lon0 = corners[0][0]
    return [(lon + 360 * round((lon0 - lon) / 360), lat) for lon, lat in corners]


class _SidecarEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    t: float = Field(0.0, ge=0, description="seconds from the clip's start")
    # top-left, top-right, bottom-right, bottom-left corner of the frame, each (lon, lat)
    corners: (
        tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]
        | None
    ) = None
    # x = a col + b row + c, y = d col + e row + f (rasterio's Affine order), in `crs`
    transform: tuple[float, float, float, float, float, float] | None = None
    crs: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> _SidecarEntry:
        if (self.corners is None) == (self.transform is None):
            raise ValueError("each frame needs exactly one of 'corners' and 'transform'")
        if self.corners is not None:
            if self.crs is not None:
                raise ValueError("'corners' are lon/lat; 'crs' goes with 'transform'")
            for lon, lat in self.corners:
                if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                    raise ValueError(f"corner ({lon}, {lat}) is not a lon/lat")
            # every turn of the outline the same way: a convex quadrilateral, corners in order
            c = np.asarray(_unwrapped(self.corners))
            edges = np.roll(c, -1, axis=0) - c
            turns = (
                edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1]
                - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
            )
            if not (np.all(turns > 0) or np.all(turns < 0)):
                raise ValueError(
                    "the corners are not a convex quadrilateral in order (top-left, top-right, "
                    "bottom-right, bottom-left)"
                )
        if self.transform is not None:
            a, b, _, d, e, _ = self.transform
            if abs(a * e - b * d) <= _MIN_AREA_RATIO * (a * a + b * b + d * d + e * e):
                raise ValueError(
                    "the 'transform' gives the frame no area on the ground (a * e - b * d is 0)"
                )
        return self


class Sidecar(BaseModel):
    """A clip's ``.geo.json``: where its frames lie on the ground, entry by entry in time."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    crs: str | None = Field(None, description="CRS of every 'transform' without its own")
    frames: list[_SidecarEntry] = Field(min_length=1)

    @field_validator("crs")
    @classmethod
    def _known_crs(cls, crs: str | None) -> str | None:
        return None if crs is None else _crs_string(crs)

    @model_validator(mode="after")
    def _transforms_have_crs(self) -> Sidecar:
        for entry in self.frames:
            if entry.transform is not None:
                if entry.crs is None and self.crs is None:
                    raise ValueError("a 'transform' needs a 'crs' (on the frame or the file)")
                if entry.crs is not None:
                    _crs_string(entry.crs)
        return self


def _crs_string(text: str) -> str:
    try:
        return CRS.from_user_input(text).to_string()
    except CRSError as exc:
        raise ValueError(f"unknown CRS {text!r}") from exc


def parse_sidecar(raw: bytes) -> Sidecar:
    """The sidecar in ``raw``; too large or invalid is an InvalidSidecar naming what is wrong."""
    if len(raw) > MAX_SIDECAR_BYTES:
        raise InvalidSidecar(f"sidecar of {len(raw)} bytes exceeds {MAX_SIDECAR_BYTES} bytes")
    try:
        return Sidecar.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidSidecar(f"invalid sidecar at {first_error(exc, 'file')}") from exc


def _homography(
    src: list[tuple[float, float]], dst: list[tuple[float, float]]
) -> tuple[float, ...]:
    """The 3x3 projective map (row-major, last entry 1) taking four points onto four points.

    No three of the points are on one line (the sidecar's corners are checked convex), so it
    exists.
    """
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, dtype=float), np.asarray(rhs, dtype=float))
    return (*h.tolist(), 1.0)


def georef_at(sidecar: Sidecar, time_s: float, width: int, height: int) -> FrameGeoref:
    """The georeference of a frame of ``width`` x ``height`` shown at ``time_s``.

    It comes from the sidecar entry nearest in time (the earlier one on a tie).
    """
    entry = min(sidecar.frames, key=lambda e: (abs(e.t - time_s), e.t))
    if entry.corners is not None:
        frame = [(0.0, 0.0), (width, 0.0), (width, height), (0.0, height)]
        matrix = _homography(frame, _unwrapped(entry.corners))
        return FrameGeoref(crs="EPSG:4326", matrix=matrix)
    assert entry.transform is not None
    a, b, c, d, e, f = entry.transform
    crs = entry.crs or sidecar.crs
    assert crs is not None
    return FrameGeoref(crs=_crs_string(crs), matrix=(a, b, c, d, e, f, 0.0, 0.0, 1.0))


def frame_footprint(
    box: tuple[float, float, float, float],
    georef: FrameGeoref,
    *,
    densify: int = 4,
    subject: str = "the box",
) -> geo.Footprint:
    """A box in frame pixels as a lon/lat polygon on the ground.

    A ValueError when the box reaches the camera's horizon, its subclass
    :class:`skyeye.imagery.geo.InvalidGeoreference` (speaking of ``subject``) when the box is no
    place on the globe.
    """
    cols, rows = geo.box_outline(*box, densify=densify)
    m = np.asarray(georef.matrix).reshape(3, 3)
    x, y, w = m @ np.vstack([cols, rows, np.ones_like(cols)])
    if np.any(np.abs(w) < 1e-12) or np.any(np.sign(w) != np.sign(w[0])):
        # the box reaches the camera's horizon: no place on the ground
        raise ValueError("the box crosses the footprint's horizon")
    return geo.lon_lat_footprint(x / w, y / w, georef.crs, subject=subject)


def frame_ground(georef: FrameGeoref, width: int, height: int) -> geo.Footprint:
    """The whole frame on the ground.

    A sidecar placing it beyond the horizon is an :class:`InvalidSidecar`; one placing it
    nowhere on the globe (a CRS PROJ cannot transform, out-of-range lon/lat) raises
    :class:`skyeye.imagery.geo.InvalidGeoreference`.
    """
    try:
        return frame_footprint(
            (0, 0, width, height), georef, subject="the frame its sidecar describes"
        )
    except geo.InvalidGeoreference:
        raise
    except ValueError as exc:
        raise InvalidSidecar(f"the frame does not lie on the ground: {exc}") from exc


def locate(outcome: TaskOutcome, georef: FrameGeoref) -> TaskOutcome:
    """The outcome with a lon/lat footprint on each detection (boxes are in frame pixels).

    A detection beyond the horizon or nowhere on the globe keeps none.
    """
    located = []
    for det in outcome.detections:
        try:
            where = frame_footprint((det.x1, det.y1, det.x2, det.y2), georef)
        except ValueError:
            located.append(det)
            continue
        located.append(replace(det, footprint=where.polygon, lon_lat_bbox=where.bbox))
    return replace(outcome, detections=located)


def png_name(index: int, time_s: float) -> str:
    """The object name of a sampled frame: sorts by order and tells its time at a glance."""
    return f"{index:04d}-{math.floor(time_s * 1000):09d}ms.png"
