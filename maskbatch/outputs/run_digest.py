"""What report.html shows of a run, gathered from the final tables in batches: the digest, the gallery."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from maskbatch import files
from maskbatch.config import MASK, NO_MASK
from maskbatch.outputs import writers
from maskbatch.outputs.draw import face_jpeg, preview_jpeg
from maskbatch.photos.video import video_of

N_FIRST = 4
N_CROWDED = 4
N_UNCERTAIN = 12
MAX_FAILED_ROWS = 500
MAX_UNMASKED_ROWS = 200
GALLERY_SIDE = 640
FACE_SIDE = 128
SIZE_BINS = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 4096)
Job = tuple[Callable[..., bytes], tuple]
Gallery = tuple[list[tuple[str, str, str]], list[bytes]]  # (section, caption, kind), JPEGs


@dataclass
class Timeline:
    """Photos committed over time: call ``add(n)`` when a partition of n photos is committed."""

    started: float = field(default_factory=time.perf_counter)
    points: list[tuple[float, int]] = field(default_factory=list)

    def add(self, photos: int) -> None:
        done = (self.points[-1][1] if self.points else 0) + int(photos)
        self.points.append((time.perf_counter() - self.started, done))


def render_local(jobs: Sequence[Job]) -> list[bytes]:
    """Run the drawing jobs in this process; a photo that cannot be drawn gives b""."""
    out = []
    for fn, args in jobs:
        try:
            out.append(fn(*args))
        except Exception:  # noqa: BLE001 - a picture missing from the report is not fatal
            out.append(b"")
    return out


def unmasked_photos(detections: pd.DataFrame, order: bool = False) -> pd.DataFrame:
    """name, faces, unmasked: photos with at least one face_no_mask, most unmasked first
    (`order`: plus _order, the first row's _order of each photo, and unsorted)."""
    columns = ["name", "faces", "unmasked"] + (["_order"] if order else [])
    if detections.empty:
        return pd.DataFrame(columns=columns)
    g = detections.assign(unmasked=detections["classname"] == NO_MASK).groupby("name", sort=False)
    parts = {"faces": g.size(), "unmasked": g["unmasked"].sum()}
    if order:
        parts["_order"] = g["_order"].min()
    table = pd.DataFrame(parts).reset_index()
    table = table[table["unmasked"] > 0]
    if order:
        return table[columns]
    return table.sort_values(["unmasked", "faces"], ascending=False, kind="stable",
                             ignore_index=True)


def face_sizes(detections: pd.DataFrame) -> np.ndarray:
    """Shorter side of each face box in pixels (columns keep the dataset's quirk)."""
    width = detections["y1"].to_numpy(float) - detections["x1"].to_numpy(float)
    height = detections["y2"].to_numpy(float) - detections["x2"].to_numpy(float)
    return np.minimum(width, height)


IMAGE_COLUMNS = ["name", "path", "status", "reason", "n_faces", "frames"]
DETECTION_FIELDS = ["name", "x1", "x2", "y1", "y2", "classname", "mask_prob", "frame"]
# report.html plots faces over time for at most this many videos (frames.parquet has them all).
MAX_VIDEO_PLOTS = 6


def _concat(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """a then b (pandas warns when concatenating an empty frame)."""
    if not len(a):
        return b.reset_index(drop=True)
    return pd.concat([a, b], ignore_index=True) if len(b) else a


def _top(frame: pd.DataFrame, by: list[str], ascending: list[bool], n: int) -> pd.DataFrame:
    """The first n rows of `frame` sorted by `by`, ties in input order (column _order)."""
    return frame.sort_values([*by, "_order"], ascending=[*ascending, True], kind="stable",
                             ignore_index=True).head(n)


@dataclass
class Digest:
    """What report.html shows, gathered from the final tables a batch at a time, so that the
    page of a run of millions of photos needs no more memory than one of a hundred.

    Feed a run's parts as they stream by (add_part: a part's manifest and detections, in input
    order), then finish(); or, from the final tables, every manifest batch (add_images), then
    every detections batch (add_detections), both in input order, then finish() with a way to
    read the manifest again (for the paths of the least certain faces).
    """

    threshold: float = 0.5
    n_first: int = N_FIRST
    photos: int = 0
    read: int = 0
    failed_rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMAGE_COLUMNS))
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    faces_per_photo: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    first: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMAGE_COLUMNS))
    crowded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMAGE_COLUMNS))
    per_class: dict[str, int] = field(default_factory=lambda: {MASK: 0, NO_MASK: 0})
    size_counts: dict[str, np.ndarray] = field(default_factory=dict)
    unmasked: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["name", "faces", "unmasked", "_order"]))
    unmasked_photos: int = 0
    uncertain: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DETECTION_FIELDS))
    boxes: dict[str, list[tuple]] = field(default_factory=dict)
    _carry: pd.DataFrame | None = None  # the last photo's faces of the batch before
    _rows: int = 0
    _paths: dict[str, str] | None = None  # add_part: the part's photos' and videos' paths

    # ---- parts: their manifest, then their detections
    def add_part(self, manifest: pd.DataFrame, detections: pd.DataFrame,
                 frames: pd.DataFrame | None = None) -> None:
        """Consecutive committed parts (a photo's faces are in its own part). Their photos'
        boxes are kept while they may still be shown: a photo out of the first or most crowded
        ones now can never enter them later."""
        self.add_images(manifest.reindex(columns=IMAGE_COLUMNS))
        videos = manifest["frames"].notna() if "frames" in manifest else pd.Series(False)
        self._paths = dict(zip(manifest["name"], manifest["path"]))
        self._paths.update(zip(manifest["name"][videos].map(video_of), manifest["path"][videos]))
        self.add_detections(detections.reindex(columns=DETECTION_FIELDS))
        shown = set(self.first["name"]) | set(self.crowded["name"])
        self.boxes = {name: boxes for name, boxes in self.boxes.items() if name in shown}

    # ---- the manifest
    def add_images(self, batch: pd.DataFrame) -> None:
        batch = batch.assign(_order=np.arange(self.photos, self.photos + len(batch)))
        self.photos += len(batch)
        ok = batch[batch["status"] == "ok"]
        bad = batch[batch["status"] != "ok"]
        self.read += len(ok)
        self.failed += len(bad)
        for reason, n in bad["reason"].value_counts().items():
            self.reasons[str(reason)] = self.reasons.get(str(reason), 0) + int(n)
        if len(self.failed_rows) < MAX_FAILED_ROWS:
            self.failed_rows = _concat(self.failed_rows, bad[IMAGE_COLUMNS]).head(MAX_FAILED_ROWS)
        counts = np.bincount(ok["n_faces"].to_numpy(np.int64), minlength=1) if len(ok) else \
            np.zeros(1, np.int64)
        size = max(len(counts), len(self.faces_per_photo))
        self.faces_per_photo = (np.pad(self.faces_per_photo, (0, size - len(self.faces_per_photo)))
                                + np.pad(counts, (0, size - len(counts))))
        photos = ok[ok["frames"].isna()]  # a video segment is no one picture to show
        if len(self.first) < self.n_first:
            self.first = _concat(self.first, photos.head(self.n_first)).head(self.n_first)
        self.crowded = _top(_concat(self.crowded, photos[photos["n_faces"] > 0]), ["n_faces"],
                            [False], N_CROWDED)

    # ---- the detections
    def add_detections(self, batch: pd.DataFrame) -> None:
        batch = batch.assign(_order=np.arange(self._rows, self._rows + len(batch)))
        self._rows += len(batch)
        classes = batch["classname"].to_numpy()
        sizes = face_sizes(batch)
        for cls in dict.fromkeys([*self.per_class, *pd.unique(classes)]):  # an N-class model's too
            self.per_class[cls] = self.per_class.get(cls, 0) + int((classes == cls).sum())
            h = np.histogram(sizes[classes == cls], bins=SIZE_BINS)[0]
            self.size_counts[cls] = self.size_counts.get(cls, 0) + h
        gap = (batch["mask_prob"] - self.threshold).abs()
        self.uncertain = _top(_concat(self.uncertain, batch.assign(_gap=gap)), ["_gap"], [True],
                              N_UNCERTAIN)
        if self._paths is not None:  # parts: the path a face is drawn from is in its own part
            self.uncertain = self.uncertain.assign(path=[
                path if isinstance(path, str) else self._paths.get(
                    frame_video(name) if pd.notna(frame) else name)
                for name, frame, path in zip(self.uncertain["name"], self.uncertain["frame"],
                                             self.uncertain.get("path", [None] * N_UNCERTAIN))])
        shown = set(self.first["name"]) | set(self.crowded["name"])
        for row in batch[batch["name"].isin(shown)].itertuples(index=False):
            self.boxes.setdefault(row.name, []).append(
                (row.x1, row.x2, row.y1, row.y2, row.classname, row.mask_prob))
        # faces per photo: a photo's rows are contiguous; its last one may go on in the next batch
        if self._carry is not None:
            batch = _concat(self._carry, batch)
        last = batch["name"].iloc[-1] if len(batch) else None
        self._carry = batch[batch["name"] == last] if last is not None else None
        self._add_unmasked(batch[batch["name"] != last])

    def _add_unmasked(self, rows: pd.DataFrame) -> None:
        table = unmasked_photos(rows, order=True)
        self.unmasked_photos += len(table)
        self.unmasked = _top(_concat(self.unmasked, table), ["unmasked", "faces"], [False, False],
                             MAX_UNMASKED_ROWS)

    def finish(self, images: Callable[[], Iterable[pd.DataFrame]] | None = None) -> Digest:
        """Close the last photo's faces; give the least certain faces their photo's path (read
        from `images`, the manifest's batches, unless the parts gave them)."""
        if self._carry is not None and len(self._carry):
            self._add_unmasked(self._carry)
        self._carry = None
        if images is None:
            order = [c for c in self.uncertain.columns if c != "path"] + ["path"]
            self.uncertain = self.uncertain.reindex(columns=order)
            return self
        wanted = set(self.uncertain["name"])
        paths: dict[str, str] = {}
        frames = self.uncertain["frame"].notna().to_numpy()
        videos = {frame_video(n) for n in self.uncertain["name"][frames]} - {None}
        for batch in images() if wanted else ():
            hit = batch[batch["name"].isin(wanted)]
            paths.update(zip(hit["name"], hit["path"]))
            if videos:  # a frame's face is drawn from its video: the segments' path
                owners = batch["name"].map(video_of)
                hit = batch[owners.isin(videos)]
                paths.update(zip(owners[hit.index], hit["path"]))
        path = [paths.get(frame_video(n)) if is_frame else paths.get(n)
                for n, is_frame in zip(self.uncertain["name"], frames)]
        self.uncertain = self.uncertain.assign(path=path)
        return self

    @property
    def faces(self) -> int:
        return sum(self.per_class.values())

    @classmethod
    def of_tables(cls, detections: pd.DataFrame, manifest: pd.DataFrame, threshold: float = 0.5,
                  n_first: int = N_FIRST) -> Digest:
        """The digest of tables held in memory (each one batch)."""
        digest = cls(threshold=threshold, n_first=n_first)
        manifest = manifest.reindex(columns=IMAGE_COLUMNS)  # tables without the video columns
        digest.add_images(manifest)
        digest.add_detections(detections.reindex(columns=DETECTION_FIELDS))
        return digest.finish(lambda: [manifest])

    @classmethod
    def for_run(cls, threshold: float = 0.5, n_first: int = N_FIRST,
                class_names: Sequence[str] = (MASK, NO_MASK)) -> Digest:
        """An empty digest of a run whose model has `class_names`, to be fed its parts."""
        return cls(threshold=threshold, n_first=n_first,
                   per_class=dict.fromkeys([MASK, NO_MASK, *class_names], 0))

    @classmethod
    def of_out_dir(cls, out_dir: str, threshold: float = 0.5, n_first: int = N_FIRST,
                   batch_rows: int = 65_536, class_names: Sequence[str] = (MASK, NO_MASK)
                   ) -> Digest:
        """The digest of a run's images.parquet and detections.parquet, read in batches;
        faces are counted for each of `class_names` (the model card's), none found or not."""
        def batches(name: str, columns: list[str]) -> Iterable[pd.DataFrame]:
            return writers.read_parquet_batches(files.join(out_dir, name), columns, batch_rows)

        digest = cls.for_run(threshold, n_first, class_names)
        for batch in batches("images.parquet", IMAGE_COLUMNS):
            digest.add_images(batch)
        for batch in batches("detections.parquet", DETECTION_FIELDS):
            digest.add_detections(batch)
        return digest.finish(lambda: batches("images.parquet", ["name", "path"]))


def frame_video(name: str) -> str | None:
    """The video of a frame's detection name (``clip.mp4#t=12.000`` -> ``clip.mp4``), else None."""
    video, sep, rest = str(name).rpartition("#t=")
    return video if sep and rest.replace(".", "", 1).isdigit() else None


def video_timelines(out_dir: str, max_videos: int = MAX_VIDEO_PLOTS
                    ) -> tuple[dict[str, pd.DataFrame], int]:
    """({video: its frames (time_s, faces per class)} of the first `max_videos` videos of
    frames.parquet, the number of videos in all); ({}, 0) for a run without videos. Read in
    batches: memory holds the plotted videos' frames only."""
    fs, path = files.filesystem(files.join(out_dir, "frames.parquet"))
    if not fs.exists(path):
        return {}, 0
    shown: dict[str, list[pd.DataFrame]] = {}
    seen: set[str] = set()
    url = files.join(out_dir, "frames.parquet")
    classes = [c for c in writers.read_parquet_schema(url).names
               if c not in writers.FRAME_KEY_COLUMNS]  # the model card's classes, in its order
    for batch in writers.read_parquet_batches(url, ["video", "time_s", *classes]):
        for name, rows in batch.groupby("video", sort=False):
            seen.add(name)
            if name in shown or len(shown) < max_videos:
                shown.setdefault(name, []).append(rows.drop(columns="video"))
    return {k: pd.concat(v, ignore_index=True) for k, v in shown.items()}, len(seen)


def gallery_jobs(digest: Digest) -> tuple[list[tuple[str, str, str]], list[Job]]:
    """((section, caption, kind) per picture, the drawing jobs), in the same order."""

    items: list[tuple[str, str, str]] = []
    jobs: list[Job] = []
    for section, rows in (("first", digest.first), ("crowded", digest.crowded)):
        for row in rows.itertuples(index=False):
            caption = (f"{row.name}: {row.n_faces} face(s)" if section == "first"
                       else f"{row.name}: {row.n_faces} faces")
            items.append((section, caption, "photo"))
            jobs.append((preview_jpeg, (row.path, digest.boxes.get(row.name, []), GALLERY_SIDE)))
    for row in digest.uncertain.itertuples(index=False):
        shown = {MASK: "mask", NO_MASK: "no mask"}.get(row.classname,
                                                       str(row.classname).replace("_", " "))
        items.append(("uncertain", f"{row.name}: {shown}, P(mask) {row.mask_prob:.2f}", "face"))
        frame = None if pd.isna(row.frame) else int(row.frame)
        jobs.append((face_jpeg, (row.path, (row.x1, row.x2, row.y1, row.y2), FACE_SIDE, 0.25,
                                 frame)))
    return items, jobs


def draw_gallery(digest: Digest, render: Callable[[Sequence[Job]], list[bytes]] = render_local
                 ) -> Gallery:
    """The gallery's captions and JPEGs: `render` draws the (function, args) jobs (api.predict
    gives one that runs them on the Dask workers, which read the photos)."""
    items, jobs = gallery_jobs(digest)
    return items, list(render(jobs)) if jobs else []

