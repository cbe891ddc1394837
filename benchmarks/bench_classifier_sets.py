"""Per-set validation accuracy of classifier models: the val part of each set, as `maskbatch train`
splits it (committed split for medical-mask and voc-masks, grouped 20 % for other folders);
`--part tune` scores the tune part instead (what a choice between models may look at).

    maskbatch extract ../shared/data/medical-mask --out /tmp/mb-x-medical-mask
    maskbatch extract ../shared/data/voc-masks    --out /tmp/mb-x-voc-masks
    maskbatch extract ../shared/data/crops        --out /tmp/mb-x-crops
    python benchmarks/bench_classifier_sets.py /tmp/mb-x-medical-mask /tmp/mb-x-voc-masks \
        /tmp/mb-x-crops --models maskbatch/models /tmp/mb-model

    python benchmarks/bench_classifier_sets.py <the same three folders> --part tune \
        --models maskbatch/models /tmp/mb-model

onnxruntime only (no TensorFlow); each model at its own card's threshold (and at 0.5), with the
log loss. Prints one markdown table; results in docs/classifier.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crops", nargs="+", help="extract folders, one per set")
    parser.add_argument("--models", nargs="+", required=True, help="model folders")
    parser.add_argument("--seed", type=int, default=0, help="split seed (train's --seed)")
    parser.add_argument("--part", default="val", choices=["val", "tune"],
                        help="which part of each set to score (default: val)")
    args = parser.parse_args()

    import pandas as pd

    from maskbatch.models.classifier import Classifier, read_model
    from maskbatch.train import data as tdata
    from maskbatch.train.metrics import classification_report

    raw, _ = tdata.load_sets(args.crops)
    frames = [tdata.drop_duplicates(g.reset_index(drop=True))[0]
              for _, g in raw.groupby("set", sort=True)]
    df = pd.concat(frames, ignore_index=True)
    parts = tdata.assign_parts(df, seed=args.seed)
    val = df[parts == args.part].reset_index(drop=True)
    group = val["set"]
    rows = []
    for folder in args.models:
        classifier = Classifier(*read_model(folder))
        arrays = tdata.to_arrays(val, classifier.input_size)
        prob = np.concatenate([classifier.predict_batch(arrays.x[i:i + 256])
                               for i in range(0, len(arrays.x), 256)])
        for name in [*sorted(group.unique()), "all"]:
            keep = np.ones(len(val), bool) if name == "all" else (group == name).to_numpy()
            rep = classification_report(arrays.y[keep], prob[keep], classifier.threshold)
            at_half = classification_report(arrays.y[keep], prob[keep], 0.5)["accuracy"]
            per = rep["per_class"]
            p = np.clip(prob[keep].astype(float), 1e-7, 1 - 1e-7)
            y = arrays.y[keep]
            log_loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
            rows.append([folder, classifier.sha256[:12], name, rep["n"],
                         f"{rep['accuracy']:.4f}", f"{at_half:.4f}", f"{log_loss:.4f}",
                         f"{per['face_with_mask']['recall']:.3f}",
                         f"{per['face_no_mask']['recall']:.3f}",
                         str(rep["confusion_matrix"]["rows_true_cols_pred"])])
    print(table(["model", "sha256", f"{args.part} set", "crops", "accuracy (card threshold)",
                 "accuracy at 0.5", "log loss", "mask recall", "no-mask recall", "confusion [[m→m, m→n], "
                 "[n→m, n→n]]"], rows))


if __name__ == "__main__":
    main()
