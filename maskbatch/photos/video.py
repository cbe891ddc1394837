"""Video files as inputs: probe once, cut into time segments, decode a segment's sampled frames.

The driver probes each video (frame count, frame rate, size, display matrix, through PyAV:
FFmpeg's libraries) and checks the header's length against the time stamps of the stream's last
packets: a variable-frame-rate stream is as long as its time stamps say, not frames / guessed
rate, and a header that says more than the frames hold is cut where they end. It turns the video
into segments of VIDEO_SEGMENT_SECONDS, each one partition item named
``clip.mp4@0000.000-0060.000`` whose path is a Segment (no more segments than frames to sample;
whatever lies past the last frame is one item). A worker opens the file, seeks to the keyframe at
or before the segment's first sampled frame and reads its packets forward, handing back the frame
shown at each t = 0, 1/F, 2/F ... in [start, stop) (the last frame whose time stamp is at or
before t), each frame once, turned as a player shows it. Packets are cheap to read; only the
frames from the last keyframe before a sampled frame up to it are decoded (with FFmpeg in one
thread), and only sampled frames are converted to BGR. Decoding runs in a helper thread, one frame
at a time on request, within the segment's --read-timeout budget; a file that ends before its
header said keeps the frames read and says where it stopped.

The work is split by job: video_probe (is it a video, what its header and time stamps say),
video_segments (the partition items and their sampled frames), video_frames (decoding the frames
shown at given indices); this module reads a segment's frames within its budget, and keeps the
names the rest of maskbatch uses.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import numpy as np

from maskbatch.config import InputLimits
from maskbatch.errors import ImageError
from maskbatch.photos import decoding
from maskbatch.photos.video_frames import decode_frames, read_frame
from maskbatch.photos.video_probe import VideoInfo, looks_like_video, probe
from maskbatch.photos.video_segments import (
    Segment,
    expand_videos,
    frame_name,
    sampled_frames,
    segment_name,
    video_of,
)


@dataclass
class SegmentRead:
    """What reading a segment gave: frames handed over, and why it stopped early (or "")."""

    frames: int = 0
    last_time: float | None = None
    problem: str = ""


_DONE = object()


# (path, wanted frame indices) -> (index, image, or None for a frame handed over already)
Decoder = Callable[[str, list[int]], Iterator[tuple[int, np.ndarray | None]]]


def read_segment(segment: Segment, limits: InputLimits, result: SegmentRead,
                 decoder: Decoder | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in s, BGR image) of each frame sampled in the segment, in order, each
    frame once (a frame shown at several sample times comes at the first).

    The decoder (`decode_frames` unless one is given) runs in a helper thread and decodes a frame
    only when this generator asks for the next one, so a worker uses one core; the time spent
    waiting for it counts against ``limits.read_timeout`` for the whole segment. A frame over
    ``limits.max_pixels``, a file that ends early or a stalled decoder stops the segment with
    `result.problem` set; the frames before it have been handed over. A segment wholly after the
    stream's last frame is not opened.
    """
    info = segment.info
    if info.width * info.height > limits.max_pixels:
        raise ImageError(f"{info.width} x {info.height} pixels, over the "
                         f"{limits.max_pixels / 1e6:g} megapixel limit per frame (see --max-pixels)")
    if info.end_s is not None and segment.start >= info.end_s - 1e-9:
        result.problem = (f"video ends early: no frame read from t={segment.start:.3f} s of "
                          f"{info.duration:.3f} s (its last frame ends at t={info.end_s:.3f} s)")
        return
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
    waited, covered = 0.0, []  # covered: the wanted indices the decoder has answered
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
                result.problem = _ended(segment, wanted, covered, result)
                return
            if isinstance(got, BaseException):
                raise got
            index, image = got
            covered.append(index)
            if image is None:  # shown at an earlier sample time too: handed over then
                continue
            if image.shape[0] * image.shape[1] > limits.max_pixels:
                raise ImageError(f"{image.shape[1]} x {image.shape[0]} pixels, over the "
                                 f"{limits.max_pixels / 1e6:g} megapixel limit per frame "
                                 "(see --max-pixels)")
            result.frames += 1
            result.last_time = index / info.fps
            yield index, index / info.fps, image
    finally:
        stop.set()


def _ended(segment: Segment, wanted: list[int], covered: list[int], result: SegmentRead) -> str:
    """Why the segment's reading stopped where it did, or "" where nothing was missed."""
    info = segment.info
    # a container's frame count may be an estimate: a frame or two short at the very end is not
    # damage
    short = not covered or covered[-1] < min(wanted[-1], info.grid_frames - 3)
    if len(covered) < len(wanted) and short:
        return "video ends early: " + (
            f"read frames up to t={result.last_time:.3f} s of {info.duration:.3f} s"
            if result.last_time is not None else
            f"no frame read from t={segment.start:.3f} s of {info.duration:.3f} s")
    if not info.timed and segment.stop >= info.duration - 1e-9:
        return (f"its length is the header's ({info.duration:.3f} s), with no time stamps to "
                "check it: frames after that, if any, are not read")
    return ""


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


__all__ = ["Decoder", "Segment", "SegmentRead", "VideoInfo", "decode_frames", "expand_videos",
           "frame_name", "looks_like_video", "probe", "read_frame", "read_segment", "sampled_frames",
           "segment_name", "video_of"]
