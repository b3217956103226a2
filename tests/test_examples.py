"""Every script in `examples/` runs with small settings and prints only finite numbers."""

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from problems import Problem, reference_optimum

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
        "sparse_skin.py",
        "letter_sparse.py",
    } <= names


def _run(script: Path, tmp_path: Path) -> str:
    completed = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


# The two sparse examples take half a minute each even in quick mode, and three more ten
# seconds each (each compiles its own fits in a fresh process): `make test-slow`.
SLOW_EXAMPLES = {
    "sparse_skin",
    "letter_sparse",
    "logistic_regression_blr",
    "custom_likelihood",
    "coal_mining_poisson",
}


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(path, marks=pytest.mark.slow) if path.stem in SLOW_EXAMPLES else path
        for path in EXAMPLES
    ],
    ids=lambda path: path.stem,
)
def test_example_runs_and_prints_finite_numbers(script, tmp_path):
    output = _run(script, tmp_path)
    assert "ELBO" in output, output
    assert not _NON_FINITE.search(output), output
    numbers = parse_numbers(output)
    assert numbers, output
    assert all(math.isfinite(number) for number in numbers), output
    plots = list(tmp_path.glob("*.png"))
    assert plots and all(plot.stat().st_size > 0 for plot in plots)


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_logistic_regression_example_against_independent_optima(tmp_path):
    script = ROOT / "examples" / "logistic_regression_blr.py"
    output = _run(script, tmp_path)
    line = re.compile(r"^(.+?): steps \d+, ELBO (\S+), mean", re.MULTILINE)
    elbos = {name: float(value) for name, value in line.findall(output)}
    assert set(elbos) == {"NaturalGradient", "BLR full", "BLR mean-field", "BLR delta (Laplace)"}
    # The same data (the example's own generator, 100 points in --quick) and prior N(0, 4 I),
    # with the optima of the full and mean-field Gaussian families by L-BFGS (tests/problems.py).
    spec = importlib.util.spec_from_file_location("logistic_example", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    design, labels, _ = example.make_data(100)
    problem = Problem("logistic-example", "logit", design, labels, False, prior_variance=4.0)
    full, mean_field = reference_optimum(problem, "full"), reference_optimum(problem, "mean-field")
    assert abs(elbos["NaturalGradient"] - full) < 2e-6  # printed with 6 decimals
    # Monte Carlo BLR ends near its family's optimum and cannot beat it.
    assert full - 0.01 < elbos["BLR full"] <= full + 1e-6
    assert mean_field - 0.01 < elbos["BLR mean-field"] <= mean_field + 1e-6
    assert full - mean_field > 0.05  # the mean field loses the weights' correlations
    assert elbos["BLR delta (Laplace)"] < full - 1e-3  # the Laplace point is not the optimum
