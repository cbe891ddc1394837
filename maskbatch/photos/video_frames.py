"""Decoding a local video's frames by index: seek to the keyframe before a wanted frame, read packets
forward, decode only what a wanted frame needs (FFmpeg in one thread), hand back BGR images."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from fractions import Fraction

import av
import numpy as np

from maskbatch import files
from maskbatch.errors import ImageError
from maskbatch.photos import decoding
from maskbatch.photos.video_probe import stream_rate


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


def decode_frames(path: str, wanted: list[int]) -> Iterator[tuple[int, np.ndarray | None]]:
    """(index, BGR image) for each of the frame indices `wanted` (ascending) of a local video: the
    frame shown at t = index / fps (fps: the stream's guessed rate), turned as its display matrix
    says; None instead of the image where that frame was handed over already (a frame shown at
    several sample times of a variable-frame-rate video).

    The frame shown at t is the last frame whose time stamp is at or before t, on the 1 / fps grid
    (in a constant-rate file, frame number `index`, what OpenCV's CAP_PROP_POS_FRAMES counts);
    the last frame of the stream stays shown for its duration; a t before the first frame gets the
    first. The demuxer seeks to the keyframe at or before the first wanted frame; from there every
    packet is read, but a packet is decoded only when a wanted frame needs it: the packets since
    the last keyframe at or before the next wanted frame are held and decoded once a packet at or
    past that frame comes. Where the stream ends before a wanted frame, the iterator ends.
    """
    container, stream = _open_stream(path)
    try:
        rate, base, origin = stream_rate(stream), stream.time_base, stream.start_time or 0
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
        picker = _Picker(wanted, index_of)
        for frames in _decoded(container, stream, index_of, picker):
            for frame in frames:
                yield from picker.shown(frame)
                if picker.target is None:
                    return
        yield from picker.stream_ended(max(1, round(1 / (rate * base))))
    finally:
        container.close()


def _decoded(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
             index_of: Callable[[int], int], picker: _Picker) -> Iterator[list[av.VideoFrame]]:
    """The frames decoded from the stream's packets, in showing order, decoding only the packets
    the picker's next target needs (from the last keyframe before it on)."""
    codec = stream.codec_context
    held: list[av.Packet] = []  # read, not yet decoded; they follow what the decoder was fed
    restart = False  # the decoder's state is from frames before `held`'s keyframe
    for packet in container.demux(stream):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is not None and picker.target is not None and index_of(stamp) < picker.target:
            if packet.is_keyframe:  # decoding can start here instead of earlier
                held.clear()
                restart = True
            held.append(packet)
            continue
        if restart:
            codec.flush_buffers()
            picker.last = None  # frames before the skipped packets are not shown at the target
            restart = False
        held.append(packet)  # the flush packet at the end (no stamp) drains the decoder
        for one in held:
            yield codec.decode(one)
        held.clear()


class _Picker:
    """Which decoded frame is shown at each wanted index, fed the frames in showing order."""

    def __init__(self, wanted: list[int], index_of: Callable[[int], int]) -> None:
        self.targets, self.index_of = iter(wanted), index_of
        self.target: int | None = next(self.targets)
        self.last: av.VideoFrame | None = None  # the latest frame at or before the target
        self.handed: int | None = None  # the time stamp of the frame handed over last

    def shown(self, frame: av.VideoFrame) -> Iterator[tuple[int, np.ndarray | None]]:
        at = self.index_of(frame.pts) if frame.pts is not None else self.target
        while self.target is not None and at > self.target:  # the frame before it is shown
            yield self._hand(self.last if self.last is not None else frame)
        self.last = frame
        if self.target is not None and at == self.target:
            yield self._hand(frame)

    def stream_ended(self, one_frame: int) -> Iterator[tuple[int, np.ndarray | None]]:
        """The last frame is shown up to its end (its duration, else one frame at the rate)."""
        last = self.last
        if last is None or last.pts is None:
            return
        ends = self.index_of(last.pts + (last.duration or one_frame))
        while self.target is not None and self.target < ends:
            yield self._hand(last)

    def _hand(self, frame: av.VideoFrame) -> tuple[int, np.ndarray | None]:
        target, self.target = self.target, next(self.targets, None)
        if frame.pts is not None and frame.pts == self.handed:
            return target, None
        self.handed = frame.pts
        return target, upright(frame)


def upright(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as BGR pixels turned as a player shows it (its display matrix's rotation,
    to the nearest quarter turn; PyAV's `rotation` is counter-clockwise, as np.rot90 turns, and 0
    without a matrix). Mirroring in the matrix is not applied. Only `rotation` is read: touching
    `frame.side_data` per frame made decoding every frame of a 640x480 clip about 30 % slower
    (the frames' buffers live on)."""
    image = frame.to_ndarray(format="bgr24")
    turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


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



__all__ = ["decode_frames", "read_frame", "upright"]
