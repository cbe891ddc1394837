"""A video as partition items: time segments of the probed video, their names, and the frames
sampled in each at a given rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from maskbatch.config import VIDEO_FPS, VIDEO_SEGMENT_SECONDS, InputLimits
from maskbatch.errors import ImageError, MaskbatchError
from maskbatch.photos import reading
from maskbatch.photos.video_probe import NOT_A_VIDEO, REMOTE, VideoInfo, looks_like_video, probe

# Segments of one video at most (27 h of 1 s segments): the driver holds them all in memory.
MAX_SEGMENTS_PER_VIDEO = 100_000


@dataclass(frozen=True)
class Segment:
    """One partition item of a video: the frames sampled at `sample_fps` in [start, stop) s."""

    path: str
    start: float
    stop: float
    sample_fps: float
    info: VideoInfo

    def __str__(self) -> str:  # what the manifest's `path` column shows
        return self.path


def segment_name(name: str, start: float, stop: float) -> str:
    """The stable name of a segment of video `name`, e.g. ``clip.mp4@0000.000-0060.000``."""
    return f"{name}@{start:08.3f}-{stop:08.3f}"


def frame_name(name: str, time_s: float) -> str:
    """The name a frame's detections carry in submission.csv: ``clip.mp4#t=12.000``."""
    return f"{name}#t={time_s:.3f}"


def video_of(segment_item_name: str) -> str:
    """The video's own name from a segment's name."""
    return segment_item_name.rsplit("@", 1)[0]


def sampled_frames(segment: Segment) -> list[int]:
    """Frame indices sampled in the segment: the frame shown at each t = k / sample_fps, as a step
    of the stream's 1 / fps grid (a frame's index in a constant-rate video). Computed without a
    step per sample: a range where sampling is at least as fast as the grid, else one array."""
    info, rate = segment.info, segment.sample_fps
    end = min(segment.stop, info.duration) - 1e-9
    first, after = math.ceil(segment.start * rate - 1e-9), _first_sample_at(end, rate)
    if after <= first:
        return []
    last = info.grid_frames - 1

    def index(k: int) -> int:
        return min(last, math.floor(k / rate * info.fps + 1e-6))

    if rate >= info.fps:  # steps of at most one grid step: every index from the first to the last
        return list(range(index(first), index(after - 1) + 1))
    times = np.arange(first, after, dtype=np.float64) / rate
    return np.unique(np.minimum(last, np.floor(times * info.fps + 1e-6))).astype(int).tolist()


def _first_sample_at(end: float, rate: float) -> int:
    """The smallest k with k / rate >= end (the float comparison a per-step loop makes)."""
    k = max(0, math.ceil(end * rate))
    for _ in range(64):  # float rounding puts the estimate a step or two off at most
        if k > 0 and (k - 1) / rate >= end:
            k -= 1
        elif k / rate < end:
            k += 1
        else:
            break
    return k


def expand_videos(inputs: list[tuple[str, str]], fps: float = VIDEO_FPS,
                  segment_seconds: float = VIDEO_SEGMENT_SECONDS,
                  limits: InputLimits = InputLimits()) -> list[tuple[str, str | Segment]]:
    """The job's partition items: photos as they are, each video as its segments (probed here,
    once); a video that cannot be probed is one failed item with the reason."""
    if not (0 < fps < math.inf and segment_seconds > 0):  # NaN fails both
        raise MaskbatchError(f"frames per second ({fps:g}) and segment seconds "
                             f"({segment_seconds:g}) must be positive numbers")
    items: list[tuple[str, str | Segment]] = []
    for name, path in inputs:
        kind = looks_like_video(path)
        if kind is None:
            items.append((name, path))
            continue
        if kind in ("", "remote"):
            items.append((name, reading.refused_path("failed", REMOTE if kind else NOT_A_VIDEO)))
            continue
        try:
            info = probe(path, limits.read_timeout)
        except ImageError as exc:
            items.append((name, reading.refused_path("failed", str(exc))))
            continue
        items.extend(video_segments(name, path, info, fps, segment_seconds))
    return items


def video_segments(name: str, path: str, info: VideoInfo, fps: float, segment_seconds: float
                   ) -> list[tuple[str, Segment]]:
    """A probed video's segments: [0, s), [s, 2s) ... up to its length, but only up to where its
    last frame ends (`info.end_s`): the rest, if any, is one segment that says it has no frames.
    Never more segments than it has frames to sample, nor MAX_SEGMENTS_PER_VIDEO: past that, each
    segment is a whole multiple of `segment_seconds` long."""
    length = info.duration
    frames_end = min(length, info.end_s) if info.end_s is not None else length
    step = segment_step(frames_end, fps, info.fps, segment_seconds)
    out: list[tuple[str, Segment]] = []
    start = 0.0
    while start < frames_end - 1e-9:
        stop = min(start + step, length)
        out.append((segment_name(name, start, stop), Segment(path, start, stop, fps, info)))
        start = stop
    if start < length - 1e-9:  # past its last frame: one item, however long the header says
        out.append((segment_name(name, start, length), Segment(path, start, length, fps, info)))
    return out


def segment_step(seconds: float, sample_fps: float, video_fps: float, segment_seconds: float
                 ) -> float:
    """The length of a video's segments: `segment_seconds`, or the smallest whole multiple of it
    that cuts `seconds` into no more segments than there are frames to sample in it
    (seconds x min(sample rate, frame rate)) and no more than MAX_SEGMENTS_PER_VIDEO."""
    count = math.ceil(seconds / segment_seconds)
    cap = min(MAX_SEGMENTS_PER_VIDEO, max(1, math.ceil(seconds * min(sample_fps, video_fps))))
    return segment_seconds if count <= cap else segment_seconds * math.ceil(count / cap)


__all__ = ["MAX_SEGMENTS_PER_VIDEO", "Segment", "expand_videos", "frame_name", "sampled_frames",
           "segment_name", "segment_step", "video_of", "video_segments"]
