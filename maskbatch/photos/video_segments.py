"""A video as partition items: time segments of the probed video, their names, and the frames
sampled in each at a given rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from maskbatch.config import VIDEO_FPS, VIDEO_SEGMENT_SECONDS, InputLimits
from maskbatch.errors import ImageError
from maskbatch.photos import reading
from maskbatch.photos.video_probe import NOT_A_VIDEO, REMOTE, VideoInfo, looks_like_video, probe


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
    """Frame indices sampled in the segment: the frame shown at each t = k / sample_fps."""
    info, chosen = segment.info, []
    k = math.ceil(segment.start * segment.sample_fps - 1e-9)
    while True:
        t = k / segment.sample_fps
        if t >= segment.stop - 1e-9 or t >= info.duration - 1e-9:
            break
        index = min(info.frames - 1, int(math.floor(t * info.fps + 1e-6)))
        if not chosen or index != chosen[-1]:
            chosen.append(index)
        k += 1
    return chosen



def expand_videos(inputs: list[tuple[str, str]], fps: float = VIDEO_FPS,
                  segment_seconds: float = VIDEO_SEGMENT_SECONDS,
                  limits: InputLimits = InputLimits()) -> list[tuple[str, str | Segment]]:
    """The job's partition items: photos as they are, each video as its segments (probed here,
    once); a video that cannot be probed is one failed item with the reason."""
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
        start = 0.0
        while start < info.duration - 1e-9:
            stop = min(start + segment_seconds, info.duration)
            items.append((segment_name(name, start, stop), Segment(path, start, stop, fps, info)))
            start = stop
    return items


__all__ = ["Segment", "expand_videos", "frame_name", "sampled_frames", "segment_name", "video_of"]
