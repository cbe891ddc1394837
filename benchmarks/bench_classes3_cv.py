"""The 3-class recipe (`maskbatch train --classes 3 --base`) scored as the job runs it, by a
grouped cross-validation over the voc-masks TRAINING photos (issue 24): AP of
face_with_mask_incorrect and the main classes' mAP against the 2-class model, per logit shift.

    maskbatch extract ../shared/data/voc-masks    --out /tmp/x-voc-masks    --classes 3
    maskbatch extract ../shared/data/medical-mask --out /tmp/x-medical-mask --classes 3
    maskbatch extract ../shared/data/crops        --out /tmp/x-crops        --classes 3
    python benchmarks/bench_classes3_cv.py /tmp/x-voc-masks /tmp/x-medical-mask /tmp/x-crops \
        --work /tmp/cv3 --shifts 2 2.5 3 4

Folds: 5 of whole training photos (seeded). Each fold's head is the bundled recipe (head.fit_head at
the bundled card's L2, the crops and their mirror images) fitted on every crop outside val whose
leakage group (source photo, pixel copies) holds none of the fold's photos. It gives the third
class's logit to the boxes the default 2-class job found on the fold's photos (`maskbatch
predict`, bundled detector and pair); with a logit shift those make an out-of-fold 3-class run,
scored by `maskbatch evaluate --classes 3 --baseline <the 2-class run>` (paired photo resamples).
No validation photo is read. Results in docs/classifier.md ("Three classes").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, table  # noqa: E402

from maskbatch.config import INCORRECT  # noqa: E402
from maskbatch.datasets import class_names_for  # noqa: E402
from maskbatch.datasets.splits import split_names  # noqa: E402
from maskbatch.models.classifier import BUNDLED_MODEL_DIRS, preprocess, read_model  # noqa: E402
from maskbatch.photos import reading  # noqa: E402
from maskbatch.pipeline import face_crops  # noqa: E402
from maskbatch.train import data as tdata  # noqa: E402
from maskbatch.train import head  # noqa: E402

SET = "voc-masks"  # the only set that labels the third class
FOLDS = 5


def maskbatch(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("maskbatch")), *args], check=True,
                   stdout=subprocess.DEVNULL)


def training_photos(work: Path) -> Path:
    """A labelled dataset folder of the set's training photos alone (links), so that the
    evaluation neither reads nor counts a validation photo."""
    folder = work / "train-photos"
    for sub in ("images", "annotations"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in split_names(SET, "train"):
        for sub, file in (("images", name), ("annotations", Path(name).stem + ".xml")):
            link = folder / sub / file
            if not link.exists():
                link.symlink_to(data_dir() / SET / sub / file)
    return folder


def two_class_run(work: Path, photos: Path) -> Path:
    """The default 2-class job on the training photos (made once)."""
    out = work / "run-2class"
    if not (out / "detections.parquet").exists():
        maskbatch("predict", str(photos / "images"), "--out", str(out), "--overwrite")
    return out


def box_features(base: head.BaseFeatures, detections: pd.DataFrame, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(P(face_with_mask), features) of every detected box, cut as the job cuts it."""
    probs, feats = np.zeros(len(detections)), None
    for name, index in detections.groupby("name").groups.items():
        image = reading.load_image(str(data_dir() / SET / "images" / name))
        # submission order: x1, x2, y1, y2 hold left, top, right, bottom
        boxes = detections.loc[index, ["x1", "x2", "y1", "y2"]].to_numpy()
        p, f = base(preprocess(face_crops(image, boxes, size), size))
        feats = np.zeros((len(detections), f.shape[1])) if feats is None else feats
        probs[index], feats[index] = p, f
    return probs, feats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crops", nargs="+", help="`extract --classes 3` folders (voc-masks first "
                                                 "or anywhere; the bundled head used three)")
    parser.add_argument("--work", required=True, help="folder for the runs this writes")
    parser.add_argument("--shifts", nargs="+", type=float, default=[2.0, 2.5, 3.0, 4.0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    base_bytes, base_card = read_model(BUNDLED_MODEL_DIRS[2])
    _, card3 = read_model(BUNDLED_MODEL_DIRS[3])
    l2, threshold, size = float(card3["head"]["l2"]), float(base_card["threshold"]), \
        int(base_card["input_size"])
    names3 = class_names_for(3)
    df, _ = tdata.load_sets(args.crops, class_names=names3)
    df = tdata.drop_duplicates(df)[0].reset_index(drop=True)
    fitting = tdata.assign_parts(df, class_names=names3) != "val"
    base = head.BaseFeatures(base_bytes, base_card)
    _, feats, mirrored = head.features(base, tdata.to_arrays(df, size, names3).x)
    y = df["label"].to_numpy() == INCORRECT
    groups = tdata.leakage_groups(df)

    photos_dir = training_photos(work)
    run2 = two_class_run(work, photos_dir)
    detections = pd.read_parquet(run2 / "detections.parquet").reset_index(drop=True)
    photos = sorted(split_names(SET, "train"))
    order = np.random.default_rng(args.seed).permutation(len(photos))
    fold_of = {photos[i]: k % FOLDS for k, i in enumerate(order)}
    in_set = (df["set"] == SET).to_numpy()
    group_fold = {g: fold_of[s] for g, own, s in zip(groups, in_set, df["source_image"].astype(str))
                  if own and s in fold_of}
    crop_fold = np.array([group_fold.get(g, -1) for g in groups])
    if not (y & fitting & (crop_fold >= 0)).any():
        raise SystemExit(f"no {INCORRECT} crop of the {SET} training photos in {args.crops}")

    prob, box_feats = box_features(base, detections, size)
    if not np.allclose(prob, detections["mask_prob"].to_numpy(), atol=1e-5):
        raise SystemExit("the boxes' P(face_with_mask) differ from the 2-class run's")
    logit = np.zeros(len(detections))
    box_fold = detections["name"].map(fold_of).to_numpy()
    for k in range(FOLDS):
        fit = fitting & (crop_fold != k)
        w, b = head.fit_head(np.vstack([feats[fit], mirrored[fit]]),
                             np.concatenate([y[fit], y[fit]]).astype(float), l2)
        logit[box_fold == k] = box_feats[box_fold == k] @ w + b

    rows = []
    for shift in args.shifts:
        probs = head.combine(prob, logit + shift, threshold)
        out = work / f"run-3class-shift{shift:g}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(run2, out, ignore=shutil.ignore_patterns("evaluation"))
        run3 = detections.assign(classname=[names3[i] for i in probs.argmax(axis=1)],
                                 **{f"prob_{c}": probs[:, i] for i, c in enumerate(names3)})
        run3.to_parquet(out / "detections.parquet", index=False)
        maskbatch("evaluate", "--truth", str(photos_dir), "--pred", str(out), "--classes",
                  "3", "--baseline", str(run2), "--resamples", str(args.resamples))
        metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
        if metrics["n_images_not_predicted"] or metrics["n_images"] != len(photos):
            raise SystemExit(f"{out}: the evaluation did not score exactly the training photos")
        ap = metrics["intervals"]["ap:" + INCORRECT]
        diff = metrics["baseline"]["difference"]
        rows.append([f"{shift:+g}", int((probs.argmax(axis=1) == 2).sum()),
                     f"{metrics['intervals']['point']['ap:' + INCORRECT]:.3f} "
                     f"({ap[0]:.3f}-{ap[1]:.3f})",
                     f"{diff['point']['map_main']:+.3f} ({diff['map_main'][0]:+.3f} to "
                     f"{diff['map_main'][1]:+.3f})"])
    print(f"{SET} training photos ({len(photos)}), {FOLDS}-fold grouped CV, head L2 {l2:g}; "
          f"{int(y[fitting & (crop_fold >= 0)].sum())} {INCORRECT} faces")
    print(table(["logit shift", "boxes called " + INCORRECT, "AP " + INCORRECT + " (95 %)",
                 "mAP of the main two, 3 - 2 classes (95 %)"], rows))


if __name__ == "__main__":
    main()
