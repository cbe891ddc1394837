"""Video files as inputs: probe once, cut into time segments, decode a segment's sampled frames.

The driver probes each video (frame count, frame rate, size, through PyAV: FFmpeg's libraries)
and turns it into segments of VIDEO_SEGMENT_SECONDS, each one partition item named
``clip.mp4@0000.000-0060.000`` whose path is a Segment. A worker opens the file, seeks to the
keyframe at or before the segment's first sampled frame and reads its packets forward, handing back
the frames at t = 0, 1/F, 2/F ... that fall in [start, stop). Packets are cheap to read; only the
frames from the last keyframe before a sampled frame up to it are decoded (with FFmpeg in one
thread), and only sampled frames are converted to BGR. Decoding runs in a helper thread, one frame
at a time on request, within the segment's --read-timeout budget; a file that ends before its
header said keeps the frames read and says where it stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from maskbatch import files
from maskbatch.config import VIDEO_FPS, VIDEO_SEGMENT_SECONDS, InputLimits
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
            fps = _rate(stream)
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


def _rate(stream: av.video.stream.VideoStream) -> Fraction:
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


@dataclass
class SegmentRead:
    """What reading a segment gave: frames handed over, and why it stopped early (or "")."""

    frames: int = 0
    last_time: float | None = None
    problem: str = ""


_DONE = object()


Decoder = Callable[[str, list[int]], Iterator[tuple[int, np.ndarray]]]


def read_segment(segment: Segment, limits: InputLimits, result: SegmentRead,
                 decoder: Decoder | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in s, BGR image) of each sampled frame of the segment, in order.

    The decoder (`decode_frames` unless one is given) runs in a helper thread and decodes a frame
    only when this generator asks for the next one, so a worker uses one core; the time spent
    waiting for it counts against ``limits.read_timeout`` for the whole segment. A frame over
    ``limits.max_pixels``, a file that ends early or a stalled decoder stops the segment with
    `result.problem` set; the frames before it have been handed over.
    """
    info = segment.info
    if info.width * info.height > limits.max_pixels:
        raise ImageError(f"{info.width} x {info.height} pixels, over the "
                         f"{limits.max_pixels / 1e6:g} megapixel limit per frame (see --max-pixels)")
    wanted = sampled_frames(segment)
    if not wanted:
        return
    inbox: queue.Queue = queue.Queue()
    ask = threading.Semaphore(0)
    stop = threading.Event()
    helper = threading.Thread(target=_decode, args=(segment.path, wanted, inbox, ask, stop,
                                                    decoder or decode_frames),
                              daemon=True, name="maskbatch-video")
    helper.start()
    budget = limits.read_timeout if limits.read_timeout and math.isfinite(limits.read_timeout) \
        else math.inf
    waited = 0.0
    try:
        while True:
            ask.release()
            began = time.perf_counter()
            try:
                got = inbox.get(timeout=max(budget - waited, 1e-3) if budget < math.inf else None)
            except queue.Empty:
                result.problem = (f"gave up after {budget:g} s decoding it (see --read-timeout) "
                                  f"{_where(result, segment)}")
                return
            waited += time.perf_counter() - began
            if got is _DONE:
                # a container's frame count may be an estimate: a frame or two short at the very
                # end is not damage
                short = result.last_time is None or \
                    round(result.last_time * info.fps) < min(wanted[-1], info.frames - 3)
                if result.frames < len(wanted) and short:
                    result.problem = "video ends early: " + (
                        f"read frames up to t={result.last_time:.3f} s of "
                        f"{info.duration:.3f} s" if result.last_time is not None else
                        f"no frame read from t={segment.start:.3f} s of {info.duration:.3f} s")
                return
            if isinstance(got, BaseException):
                raise got
            index, image = got
            if image.shape[0] * image.shape[1] > limits.max_pixels:
                raise ImageError(f"{image.shape[1]} x {image.shape[0]} pixels, over the "
                                 f"{limits.max_pixels / 1e6:g} megapixel limit per frame "
                                 "(see --max-pixels)")
            result.frames += 1
            result.last_time = index / info.fps
            yield index, index / info.fps, image
    finally:
        stop.set()


def read_frame(path: str, index: int) -> np.ndarray:
    """One frame of a local video (for the report's gallery); ImageError when it cannot be read."""
    try:
        with contextlib.closing(decode_frames(path, [index])) as frames:
            for _, image in frames:
                return image
    except av.FFmpegError as exc:
        raise ImageError(f"cannot read frame {index} of the video ({decoding.first_line(exc)})") \
            from exc
    raise ImageError(f"cannot read frame {index} of the video")


def decode_frames(path: str, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR image) of the frames `wanted` (ascending indices) of a local video.

    A frame's index is its presentation time times the frame rate, from the stream's start
    (what OpenCV's CAP_PROP_POS_FRAMES counts in a constant-rate file). The demuxer seeks to the
    keyframe at or before the first wanted frame; from there every packet is read, but a packet
    is decoded only when a wanted frame needs it: the packets since the last keyframe at or
    before the next wanted frame are held and decoded once a packet at or past that frame comes.
    A wanted frame missing from the file (a gap in the time stamps) gets the next frame there is.
    """
    container, stream = _open_stream(path)
    try:
        codec = stream.codec_context
        rate, base, origin = _rate(stream), stream.time_base, stream.start_time or 0
        if not rate or not base:
            raise ImageError("a video without a usable frame rate")

        def index_of(pts: int) -> int:
            return math.floor((pts - origin) * base * rate + Fraction(1, 2))

        if wanted[0] > 0:
            try:
                container.seek(origin + math.floor(wanted[0] / rate / base), stream=stream,
                               backward=True, any_frame=False)
            except av.FFmpegError:  # no index to seek with (a truncated AVI): from the start
                container.close()
                container, stream = _open_stream(path)
                codec = stream.codec_context
        targets = iter(wanted)
        target = next(targets)
        held: list[av.Packet] = []  # read, not yet decoded; they follow what the decoder was fed
        restart = False  # the decoder's state is from frames before `held`'s keyframe
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is not None and index_of(stamp) < target:
                if packet.is_keyframe:  # decoding can start here instead of earlier
                    held.clear()
                    restart = True
                held.append(packet)
                continue
            if restart:
                codec.flush_buffers()
                restart = False
            held.append(packet)  # the flush packet at the end (no stamp) drains the decoder
            for one in held:
                for frame in codec.decode(one):
                    shown = index_of(frame.pts) if frame.pts is not None else target
                    while shown >= target:
                        yield target, frame.to_ndarray(format="bgr24")
                        target = next(targets, None)
                        if target is None:
                            return
            held.clear()
    finally:
        container.close()


def _open_stream(path: str) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """A local video opened for decoding: its container and first video stream, decoded with
    FFmpeg in one thread (one core per worker, like every library's threads here)."""
    container = av.open(files.os_path(path))
    if not container.streams.video:
        container.close()
        raise ImageError("cannot open it as a video any more (changed since it was listed?)")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    return container, stream


def _where(result: SegmentRead, segment: Segment) -> str:
    at = f"t={result.last_time:.3f} s" if result.last_time is not None else \
        f"none from t={segment.start:.3f} s"
    return f"after {at} of {segment.info.duration:.3f} s"


def _decode(path: str, wanted: list[int], inbox: queue.Queue, ask: threading.Semaphore,
            stop: threading.Event, decoder: Decoder) -> None:
    """Helper thread: each time `ask` is released, the next wanted frame (or the end) to inbox."""

    def asked() -> bool:
        while not stop.is_set():
            if ask.acquire(timeout=0.2):
                return True
        return False

    frames = None
    try:
        frames = decoder(path, wanted)
        while asked():
            got = next(frames, _DONE)
            inbox.put(got)
            if got is _DONE:
                return
    except ImageError as exc:
        inbox.put(exc)
    except av.EOFError:
        inbox.put(_DONE)
    except Exception as exc:  # a decoder's surprise: this segment's reason
        inbox.put(ImageError(f"cannot decode the video ({type(exc).__name__}: "
                             f"{decoding.first_line(exc)})"))
    finally:
        if frames is not None:
            frames.close()  # the container with it


__all__ = ["Decoder", "Segment", "SegmentRead", "VideoInfo", "decode_frames", "expand_videos",
           "frame_name", "looks_like_video", "probe", "read_frame", "read_segment", "sampled_frames",
           "segment_name", "video_of"]
