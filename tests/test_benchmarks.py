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
