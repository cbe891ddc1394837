"""The final step alone: one read of the committed parts feeding every final file, against the
earlier way (the parts compacted, then the final tables read back for the report's digest and
for the COCO files), on the same committed parts, alternating, in this process.

    python benchmarks/bench_final.py [--photos 100000] [--faces 7] [--repeats 3]

The parts are made up here as a no-op run commits them (maskbatch.outputs.parts.write_part: every
photo an `ok` row with `--faces` faces, 1024 photos a part) in a temporary folder; each repeat
removes the final files and writes them again. Prints wall and CPU seconds (medians), the ratio,
and checks that both ways write the same bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402

from maskbatch.config import CLASS_NAMES, MASK, NO_MASK  # noqa: E402
from maskbatch.jobs.outdir import remove_final_outputs  # noqa: E402
from maskbatch.outputs import coco, parts, run_digest, writers  # noqa: E402

PART = 1024


def make_parts(out: str, photos: int, faces: int) -> list[str]:
    """Committed parts of a no-op run of `photos` photos; the input names."""
    names = [f"photo-{i:07d}.jpg" for i in range(photos)]
    log = parts.CommitLog(out)
    for first in range(0, photos, PART):
        chunk = names[first:first + PART]
        manifest = pd.DataFrame([(n, f"/photos/{n}", "ok", "", faces, 96, 64, 0.01, None, None)
                                 for n in chunk], columns=writers.PREDICT_MANIFEST_COLUMNS)
        manifest["frames"] = manifest["frames"].astype("Int64")
        manifest["duration_s"] = manifest["duration_s"].astype("float64")
        rows = [(n, 4 + 12 * k, 10, 14 + 12 * k, 22, MASK if k % 2 else NO_MASK, 0.9 - 0.1 * k,
                 0.1 * k + 0.05, 96, 64, "0" * 64, None, None) for n in chunk for k in range(faces)]
        detections = pd.DataFrame(rows, columns=writers.DETECTION_COLUMNS)
        detections["frame"] = detections["frame"].astype("Int64")
        detections["time_s"] = detections["time_s"].astype("float64")
        log.append(parts.write_part(out, first, detections, manifest))
    log.close()
    return names


def one_read(out: str, names: list[str]) -> None:
    digest = run_digest.Digest.for_run(0.5, class_names=CLASS_NAMES)
    with coco.CocoWriter(out, CLASS_NAMES) as coco_files:
        parts.compact(out, names, 0, CLASS_NAMES, sinks=[digest, coco_files])
    digest.finish()


def read_back(out: str, names: list[str]) -> None:
    parts.compact(out, names, 0, CLASS_NAMES)
    run_digest.Digest.of_out_dir(out, 0.5, class_names=CLASS_NAMES)
    coco.write_coco(out, CLASS_NAMES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--faces", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out")
        names = make_parts(out, args.photos, args.faces)
        samples: dict[str, list[tuple[float, float]]] = {"one read": [], "read back": []}
        digests = {}
        for _ in range(args.repeats):
            for label, way in (("one read", one_read), ("read back", read_back)):
                remove_final_outputs(out)
                wall, cpu = time.perf_counter(), time.process_time()
                way(out, names)
                samples[label].append((time.perf_counter() - wall, time.process_time() - cpu))
                digests[label] = {n: (Path(out) / n).read_bytes() for n in
                                  ("detections.parquet", coco.RESULTS_FILE, coco.DATASET_FILE)}
    same = digests["one read"] == digests["read back"]
    rows = []
    for label, runs in samples.items():
        rows.append([label, args.photos, args.photos * args.faces,
                     statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)])
    base = rows[1]
    rows[0].append(f"{rows[0][3] / base[3]:.2f}x wall, {rows[0][4] / base[4]:.2f}x CPU")
    rows[1].append("1.00x")
    print(table(["final step", "photos", "faces", "wall s (median)", "CPU s (median)",
                 "against read back"], rows))
    print(f"same bytes (detections.parquet, COCO files): {same}")


if __name__ == "__main__":
    main()
