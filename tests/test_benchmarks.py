"""Every benchmark script still runs: its imports resolve and its arguments parse (`--help`).

The benchmarks themselves are too slow for the suite; this keeps them from rotting when the
package moves (each imports the modules it measures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py")) + ["same_outputs.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_imports_and_parses_its_arguments(script: str) -> None:
    args = [] if script == "same_outputs.py" else ["--help"]
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
                          text=True, timeout=120, cwd=BENCHMARKS.parent)
    if script == "same_outputs.py":  # no subcommand: prints its usage and exits 1
        assert proc.returncode == 1 and "same_outputs.py run" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "usage" in proc.stdout.lower()


def test_scale_noop_preload_imports() -> None:
    proc = subprocess.run([sys.executable, "-c", "import runpy; runpy.run_path('scale_noop.py')"],
                          capture_output=True, text=True, timeout=120, cwd=BENCHMARKS)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_free_classifier_stand_in_loads_as_a_model(tmp_path: Path) -> None:
    """bench_speed --free-classifier: the stand-in passes maskbatch's own checks (checksum, card)
    and answers P(mask) 0.9 for every crop, of any size, through the job's Classifier."""
    import numpy as np

    sys.path.insert(0, str(BENCHMARKS))
    import bench_speed

    from maskbatch.models.classifier import Classifier, read_model

    data, card = read_model(bench_speed.free_classifier(tmp_path / "free"))
    crops = [np.full((h, w, 3), v, np.uint8) for h, w, v in ((30, 20, 0), (200, 180, 255))]
    probs = Classifier(data, card).mask_probability(crops)
    assert np.allclose(probs, 0.9), probs
