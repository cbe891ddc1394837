"""Probing a video file: is it one (from its first bytes), and what its container says (frame
count, frame rate, size), read through PyAV (FFmpeg's libraries) within a time budget."""

from __future__ import annotations

import math
import os
import stat
import threading
from dataclasses import dataclass
from fractions import Fraction

import av

from maskbatch import files
from maskbatch.errors import ImageError
from maskbatch.photos import decoding, reading

SNIFF_BYTES = 32
NOT_A_VIDEO = "not a video (unrecognised file signature)"
REMOTE = "a video in object storage: videos are read from local paths only (not opened)"


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container header says."""

    frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps



def looks_like_video(path: str) -> str | None:
    """The video format of a local regular file (from its first bytes), else None; a file whose
    name says video but whose content does not gives "", a video in object storage "remote": the
    caller makes a failed row of those."""
    if reading.refused_reason(path) is not None:
        return None
    if files.is_url(path):
        return "remote" if path.lower().endswith(decoding.VIDEO_EXTENSIONS) else None
    local = files.os_path(path)
    try:
        if not stat.S_ISREG(os.stat(local).st_mode):
            return None  # folders, FIFOs, devices: reading.read_bytes gives their reason
        fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        try:
            head = os.read(fd, SNIFF_BYTES)
        finally:
            os.close(fd)
    except OSError:
        return None
    kind = decoding.sniff_format(head)
    if kind in decoding.VIDEO_KINDS:
        return kind
    if local.lower().endswith(decoding.VIDEO_EXTENSIONS) and head and kind is None:
        return ""
    return None


def probe(path: str, timeout: float) -> VideoInfo:
    """Frame count, frame rate and size of a local video, within `timeout` seconds."""
    box: dict = {}
    helper = threading.Thread(target=_probe_into, args=(files.os_path(path), box), daemon=True,
                              name="maskbatch-probe")
    helper.start()
    helper.join(timeout)
    if helper.is_alive():
        raise ImageError(f"gave up after {timeout:g} s opening it (see --read-timeout)")
    if "error" in box:
        raise box["error"]
    return box["info"]


def _probe_into(path: str, box: dict) -> None:
    try:
        try:
            container = av.open(path)
        except av.FFmpegError as exc:
            raise ImageError("cannot open it as a video (corrupt or truncated; an MP4 cut short "
                             "loses its index)") from exc
        with container:
            if not container.streams.video:
                raise ImageError("cannot open it as a video (no video stream in it)")
            stream = container.streams.video[0]
            fps = stream_rate(stream)
            info = VideoInfo(stream.frames or _estimated_frames(container, stream, fps), float(fps),
                             stream.codec_context.width, stream.codec_context.height)
        if not (math.isfinite(info.fps) and info.fps > 0):
            raise ImageError(f"a video without a usable frame rate ({info.fps:g} frames/s)")
        if info.frames <= 0:
            raise ImageError("a video with no frames")
        box["info"] = info
    except Exception as exc:  # handed to the waiting thread
        box["error"] = exc if isinstance(exc, ImageError) else ImageError(
            f"cannot open it as a video ({type(exc).__name__}: {decoding.first_line(exc)})")


def stream_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """Frames per second: FFmpeg's guess (r_frame_rate, else the average), 0 when it has none."""
    return Fraction(stream.guessed_rate or stream.average_rate or 0)


def _estimated_frames(container: av.container.InputContainer,
                      stream: av.video.stream.VideoStream, fps: Fraction) -> int:
    """A frame count from the duration, for containers whose header has none (Matroska, WebM)."""
    if container.duration:
        seconds = Fraction(container.duration, av.time_base)
    elif stream.duration and stream.time_base:
        seconds = stream.duration * stream.time_base
    else:
        return 0
    return math.floor(seconds * fps + Fraction(1, 2))



__all__ = ["NOT_A_VIDEO", "REMOTE", "VideoInfo", "looks_like_video", "probe", "stream_rate"]
