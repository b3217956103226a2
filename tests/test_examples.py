"""Every script in `examples/` runs with small settings and prints only finite numbers."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_NON_FINITE = re.compile(r"\b(?:nan|inf|infinity)\b", re.IGNORECASE)


def parse_numbers(text: str) -> list[float]:
    """Every decimal number in `text`, as floats."""
    return [float(token) for token in _NUMBER.findall(text)]


def test_number_parser_sees_non_finite_output():
    # the checks below must be able to fail: a printed nan or inf is caught
    assert _NON_FINITE.search("ELBO: nan")
    assert _NON_FINITE.search("mean [ 1.0 -inf]")
    assert not _NON_FINITE.search("the final ELBO; infer, nano")
    assert parse_numbers("ELBO -14.96, steps 11, 1e-06") == [-14.96, 11.0, 1e-06]


def test_there_are_examples():
    names = {path.name for path in EXAMPLES}
    assert {
        "gp_classification_banana.py",
        "coal_mining_poisson.py",
        "logistic_regression_blr.py",
        "custom_likelihood.py",
    } <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.stem)
def test_example_runs_and_prints_finite_numbers(script, tmp_path):
    completed = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout
    assert "ELBO" in output, output
    assert not _NON_FINITE.search(output), output
    numbers = parse_numbers(output)
    assert numbers, output
    assert all(math.isfinite(number) for number in numbers), output
    plots = list(tmp_path.glob("*.png"))
    assert plots and all(plot.stat().st_size > 0 for plot in plots)
