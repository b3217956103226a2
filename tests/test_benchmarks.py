"""The sparse benchmark's ngvi workers still run (they reach into `fit`'s compiled passes, and
a rename there once broke the skin worker unnoticed until the next full benchmark run)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_sparse_quick_runs_its_ngvi_parts():
    completed = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_sparse.py",
            "--quick",
            "--no-write",
            "--parts",
            "banana",
            "skin",
            "synthetic",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    for heading in ("**banana-5300, full batch, ngvi**", "**skin**", "**synthetic**"):
        assert heading in completed.stdout
