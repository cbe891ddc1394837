"""Decoding a local video's frames by index: seek to the keyframe before a wanted frame, read packets
forward, decode only what a wanted frame needs (FFmpeg in one thread), hand back BGR images."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
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



__all__ = ["decode_frames", "read_frame"]
