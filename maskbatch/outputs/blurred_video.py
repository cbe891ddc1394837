"""The blurred copy of a video (--blur): its sampled frames, faces hidden, as H.264 in MP4 (PyAV).

Each video segment is read by one worker, which encodes its blurred sampled frames as one piece
(OUT/parts/videos/<segment>.mp4) before it commits its part; at the end of the run the pieces of
each video are joined, in time order and without decoding them again, into OUT/blurred/<stem>.mp4.
The video plays at the run's --fps: frame k of it is the frame sampled at t = k / fps (its
timestamp), so a time in it is a time in the original.

Every frame is a key frame (a sampled frame is seconds away from the next: there is little to
predict from) and there are no B-frames, so pieces join packet by packet; odd frame sizes are
padded by one pixel (H.264's 4:2:0 needs even sides).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from fractions import Fraction

import av
import cv2
import numpy as np

from maskbatch import files
from maskbatch.outputs import writers

CODEC = "libx264"
CRF = "20"  # x264's constant quality (0 lossless .. 51); 18-23 is visually close to the frames
PIECES_DIR = "parts/videos"


def frame_rate(fps: float) -> Fraction:
    """--fps as the exact-enough fraction a container's time base holds."""
    return Fraction(fps).limit_denominator(1001)


class VideoPiece:
    """The blurred frames of one segment, encoded as they come (one frame held at a time)."""

    def __init__(self, fps: float, width: int, height: int) -> None:
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, "w", format="mp4")
        rate = frame_rate(fps)
        self.stream = self.container.add_stream(CODEC, rate=rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        self.time_base = 1 / rate  # of the frames: pts = sample number (the muxer picks its own)
        context = self.stream.codec_context
        context.thread_count = 1  # a worker's one core
        context.gop_size = 1
        context.max_b_frames = 0
        context.options = {"crf": CRF, "preset": "veryfast"}
        self.frames = 0

    def add(self, image: np.ndarray, sample: int) -> None:
        """One BGR frame, shown at sample number `sample` (t = sample / fps)."""
        h, w = image.shape[:2]
        width, height = self.stream.width, self.stream.height
        if w > width or h > height:  # a frame larger than the first (a stream that changes size)
            scale = min(width / w, height / h)
            image = cv2.resize(image, (min(width, round(w * scale)), min(height, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
            h, w = image.shape[:2]
        if (w, h) != (width, height):
            image = cv2.copyMakeBorder(image, 0, height - h, 0, width - w, cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts = sample
        frame.time_base = self.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def finish(self) -> bytes:
        """The piece's MP4 bytes."""
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buffer.getvalue()


def piece_url(out_dir: str, segment_name: str) -> str:
    """Where a segment's piece lies: named by a hash of the segment's name (internal files)."""
    digest = hashlib.sha1(segment_name.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return files.join(out_dir, PIECES_DIR, f"{digest}.mp4")


def write_piece(out_dir: str, segment_name: str, piece: VideoPiece) -> None:
    writers.write_bytes_atomic(piece_url(out_dir, segment_name), piece.finish())


def join_pieces(pieces: Iterable[bytes]) -> bytes:
    """One MP4 of the pieces' frames, in the given order, packets copied as they are."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = None
        for data in pieces:
            with av.open(io.BytesIO(data)) as source:
                given = source.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(given)
                for packet in source.demux(given):
                    if packet.dts is None:  # the demuxer's empty flush packet
                        continue
                    packet.stream = stream
                    out.mux(packet)
    return buffer.getvalue()


def join_video(out_dir: str, target_name: str, segment_names: list[str]) -> int:
    """Worker side: OUT/blurred/<target_name> from the pieces of these segments (in this order;
    a segment that read no frame has none); the frames it holds (0: no file written)."""
    pieces = []
    for name in segment_names:
        fs, path = files.filesystem(piece_url(out_dir, name))
        if fs.exists(path):
            with fs.open(path, "rb") as f:
                pieces.append(f.read())
    if not pieces:
        return 0
    data = join_pieces(pieces)
    writers.write_bytes_atomic(files.join(out_dir, "blurred", target_name), data)
    with av.open(io.BytesIO(data)) as joined:
        return joined.streams.video[0].frames  # (the MP4 header's count)


def frame_count(data: bytes) -> int:
    """Frames a video holds, by decoding it (what a player shows)."""
    with av.open(io.BytesIO(data)) as source:
        return sum(1 for _ in source.decode(video=0))
