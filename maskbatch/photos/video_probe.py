"""Probing a video file: is it one (from its first bytes), and what its container says (frame
count, frame rate, size), read through PyAV (FFmpeg's libraries) within a time budget."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import threading
from dataclasses import dataclass, replace
from fractions import Fraction

import av

from maskbatch import files
from maskbatch.errors import ImageError
from maskbatch.photos import decoding, reading

SNIFF_BYTES = 32
NOT_A_VIDEO = "not a video (unrecognised file signature)"
TAIL_SEEK = 2**62  # a time stamp past any end: seeking there lands on the last keyframe
# Packets read from the last keyframe to find where a stream ends: a keyframe interval is a few
# hundred; a file without an index to seek with (an AVI cut short) is read from its start.
TAIL_PACKETS = 20_000
REMOTE = "a video in object storage: videos are read from local paths only (not opened)"


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container header says, checked against the time stamps of its packets.

    `frames` and `fps` are the header's frame count (or an estimate from its duration) and
    FFmpeg's guessed frame rate; `width` x `height` is the frame as a player shows it, after the
    display matrix's turn (`rotation`, degrees counter-clockwise: 0, 90, 180 or 270). The length is
    frames / fps unless the packets' time stamps say otherwise: `length_s` where the stream runs
    longer (variable frame rate: frames / guessed rate is too short), `end_s` where its last frame
    ends before the header's length (a file cut short, or a header that lies); `timed` is False
    where no time stamp could be read to check the header with.
    """

    frames: int
    fps: float
    width: int
    height: int
    length_s: float | None = None
    end_s: float | None = None
    rotation: int = 0
    timed: bool = True

    @property
    def duration(self) -> float:
        """The stream's length in seconds."""
        return self.length_s if self.length_s is not None else self.frames / self.fps

    @property
    def grid_frames(self) -> int:
        """Steps of 1 / fps in the stream's length: the frame indices sampling can ask for."""
        return max(1, round(self.duration * self.fps))


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
            if not (fps > 0 and math.isfinite(fps)):
                raise ImageError(f"a video without a usable frame rate ({float(fps):g} frames/s)")
            frames = stream.frames or _estimated_frames(container, stream, fps)
            width, height = stream.codec_context.width, stream.codec_context.height
            end, rotation = _tail(container, stream, fps)
        if frames <= 0 and end:
            frames = math.floor(end * fps + Fraction(1, 2))  # no length in the header at all
        if frames <= 0:
            raise ImageError("a video with no frames")
        box["info"] = _checked(VideoInfo(frames, float(fps), width, height), end, rotation)
    except Exception as exc:  # handed to the waiting thread
        box["error"] = exc if isinstance(exc, ImageError) else ImageError(
            f"cannot open it as a video ({type(exc).__name__}: {decoding.first_line(exc)})")


def _checked(header: VideoInfo, end: Fraction | None, rotation: int) -> VideoInfo:
    """The header's info with the length its time stamps give (where they differ by more than a
    frame) and the display turn applied to its size."""
    if rotation in (90, 270):
        header = replace(header, width=header.height, height=header.width)
    if end is None:
        return replace(header, rotation=rotation, timed=False)
    slack = 1 / header.fps + 1e-3
    seconds = float(end)
    return replace(header, rotation=rotation,
                   length_s=seconds if seconds > header.duration + slack else None,
                   end_s=seconds if seconds < header.duration - slack else None)


def _tail(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
          fps: Fraction) -> tuple[Fraction | None, int]:
    """Where the stream's last frame ends (s from its start, from the packets' time stamps; None
    where none has one) and the turn of its display matrix, read from its last keyframe on: the
    packets are only read, one frame is decoded for the matrix (FFmpeg puts it on every frame)."""
    base, origin = stream.time_base, stream.start_time or 0
    if not base:
        return None, 0
    one_frame = max(1, round(1 / (fps * base)))
    with contextlib.suppress(av.FFmpegError):  # no index to seek with: read from where it is
        container.seek(origin + TAIL_SEEK, stream=stream, backward=True, any_frame=False)
    codec = stream.codec_context
    codec.thread_count = 1
    end: int | None = None  # in the stream's time base
    rotation: float | None = None
    with contextlib.suppress(av.FFmpegError):  # damage: the frames end where reading stops
        for count, packet in enumerate(container.demux(stream)):
            if count >= TAIL_PACKETS:  # no index to seek with, and long: the end is not known
                end = None
                break
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is not None:
                stop = stamp + (packet.duration or one_frame)
                end = stop if end is None else max(end, stop)
            if rotation is None:
                with contextlib.suppress(av.FFmpegError):
                    rotation = next((frame.rotation for frame in codec.decode(packet)), None)
    turn = round((rotation or 0) / 90) % 4 * 90  # a player turns by quarter turns only
    return (None if end is None else (end - origin) * base), turn


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
