"""`ngvi fit` on the command line: outputs, metrics recomputed from the written predictions,
every optimizer, and one-line errors with exit code 2."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from ngvi.__main__ import main


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _read_predictions(out):
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows, [row for row in rows if row["split"] == "test"]


def _classification_csv(tmp_path, n=60, labels=(-1, 1)):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    y = np.where(a + 0.3 * rng.standard_normal(n) > 0, labels[1], labels[0])
    rows = [[f"{a[i]:.6f}", f"p{i}", f"{b[i]:.6f}", int(y[i])] for i in range(n)]
    return _write_csv(tmp_path / "data.csv", ["a", "name", "b", "label"], rows)


def test_help_via_python_m():
    completed = subprocess.run(
        [sys.executable, "-m", "ngvi", "fit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0
    for option in ("--target", "--likelihood", "--optimizer", "--out", "--steps", "--seed"):
        assert option in completed.stdout


def test_banana_default(tmp_path, capsys):
    out = tmp_path / "banana"
    assert main(["fit", "--out", str(out), "--steps", "15", "--quiet"]) == 0
    assert (out / "plot.png").stat().st_size > 0
    rows, test = _read_predictions(out)
    assert len(rows) == 400 and len(test) == 80
    # Metrics recomputed from the written predictions, independently of the CLI's arithmetic.
    y = np.array([float(row["y"]) for row in test])
    p = np.array([float(row["predictive_mean"]) for row in test])
    accuracy = np.mean((p > 0.5) == (y == 1))
    nlpd = -np.mean(np.where(y == 1, np.log(p), np.log(1 - p)))
    assert accuracy > 0.8
    assert np.isfinite(nlpd) and nlpd < math.log(2)
    reported = json.loads((out / "metrics.json").read_text())["test_metrics"]
    np.testing.assert_allclose(
        [reported["accuracy"], reported["nlpd"]], [accuracy, nlpd], rtol=1e-8
    )
    printed = capsys.readouterr().out
    assert f"accuracy {accuracy:.4f}" in printed


def test_csv_classification_skips_text_columns(tmp_path):
    path = _classification_csv(tmp_path)
    out = tmp_path / "out"
    code = main(["fit", path, "--target", "label", "--likelihood", "logit", "--steps", "20",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    rows, test = _read_predictions(out)
    assert set(rows[0]) >= {"a", "b", "label", "predictive_mean"} and "name" not in rows[0]
    assert {row["label"] for row in rows} == {"0", "1"}  # -1/+1 labels in the internal encoding
    metrics = json.loads((out / "metrics.json").read_text())["test_metrics"]
    assert metrics["accuracy"] >= 0.75 and np.isfinite(metrics["nlpd"])
    assert (out / "plot.png").exists()  # 2-D input: decision surface


def test_gaussian_regression(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, 80)
    y = 5.0 + 2.0 * np.sin(x) + 0.2 * rng.standard_normal(80)
    path = _write_csv(tmp_path / "reg.csv", ["x", "y"], np.column_stack([x, y]).tolist())
    out = tmp_path / "out"
    assert main(["fit", path, "--likelihood", "gaussian", "--steps", "100", "--out", str(out),
                 "--quiet", "--seed", "3"]) == 0  # fmt: skip
    _, test = _read_predictions(out)
    truth = np.array([float(row["y"]) for row in test])
    mean = np.array([float(row["predictive_mean"]) for row in test])
    variance = np.array([float(row["predictive_variance"]) for row in test])
    rmse = np.sqrt(np.mean((truth - mean) ** 2))
    nlpd = -np.mean(scipy.stats.norm.logpdf(truth, mean, np.sqrt(variance)))
    assert rmse < 0.4  # noise sd 0.2 on the original (unstandardised) scale
    metrics = json.loads((out / "metrics.json").read_text())["test_metrics"]
    np.testing.assert_allclose([metrics["rmse"], metrics["nlpd"]], [rmse, nlpd], rtol=1e-8)
    assert (out / "plot.png").exists()  # 1-D input: predicted versus observed


def test_poisson_counts(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 4, 60)
    counts = rng.poisson(np.exp(1.0 + np.sin(x)))
    path = _write_csv(tmp_path / "counts.csv", ["x", "n"], np.column_stack([x, counts]).tolist())
    out = tmp_path / "out"
    assert main(["fit", path, "--likelihood", "poisson", "--steps", "40", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    _, test = _read_predictions(out)
    metrics = json.loads((out / "metrics.json").read_text())["test_metrics"]

    def log_predictive(row):  # log int Poisson(y | e^f) N(f | m, v) df, by adaptive quadrature
        y, m, v = float(row["n"]), float(row["latent_mean"]), float(row["latent_variance"])

        def density(f):
            return scipy.stats.poisson.pmf(y, np.exp(f)) * scipy.stats.norm.pdf(f, m, np.sqrt(v))

        value, _ = scipy.integrate.quad(density, m - 12 * np.sqrt(v), m + 12 * np.sqrt(v))
        return np.log(value)

    nlpd = -np.mean([log_predictive(row) for row in test])
    rate = np.array([float(row["predictive_mean"]) for row in test])
    truth = np.array([float(row["n"]) for row in test])
    np.testing.assert_allclose(metrics["nlpd"], nlpd, rtol=1e-6)
    np.testing.assert_allclose(metrics["rate_rmse"], np.sqrt(np.mean((rate - truth) ** 2)))


@pytest.mark.parametrize("optimizer", ["adam", "blr", "gauss-newton"])
def test_other_optimizers(tmp_path, optimizer):
    import ngvi

    name = {"adam": "Adam", "blr": "BLR", "gauss-newton": "GaussNewton"}[optimizer]
    if not hasattr(ngvi, name):
        pytest.skip(f"ngvi.{name} is not available yet")
    path = _classification_csv(tmp_path, n=40)
    out = tmp_path / "out"
    steps = "60" if optimizer == "adam" else "15"
    code = main(["fit", path, "--target", "label", "--optimizer", optimizer, "--steps", steps,
                 "--out", str(out), "--quiet", "--no-plot"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["elbo"])
    assert metrics["test_metrics"]["accuracy"] >= 0.6


def _assert_one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ngvi fit: error:") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_missing_column(tmp_path, capsys):
    path = _classification_csv(tmp_path)
    assert main(["fit", path, "--target", "nope", "--out", str(tmp_path)]) == 2
    _assert_one_line_error(capsys, "'nope'")


def test_non_numeric_value(tmp_path, capsys):
    rows = [["1.0", "0"], ["2.0", "1"], ["oops", "1"], ["3.0", "0"]]
    path = _write_csv(tmp_path / "bad.csv", ["x", "y"], rows)
    assert main(["fit", path, "--target", "y", "--out", str(tmp_path)]) == 2
    _assert_one_line_error(capsys, "'x'", "'oops'")
    rows = [["1.0", "0"], ["2.0", "yes"], ["3.0", "1"]]
    path = _write_csv(tmp_path / "bad_target.csv", ["x", "y"], rows)
    assert main(["fit", path, "--out", str(tmp_path)]) == 2
    _assert_one_line_error(capsys, "'y'", "'yes'")


@pytest.mark.parametrize(
    "likelihood, labels",
    [("probit", [0, 1, 2, 1]), ("logit", [0.5, 1, 0, 1]), ("poisson", [1, -2, 3, 0])],
)
def test_labels_the_likelihood_cannot_take(tmp_path, capsys, likelihood, labels):
    rows = [[float(i), label] for i, label in enumerate(labels)]
    path = _write_csv(tmp_path / "labels.csv", ["x", "y"], rows)
    assert main(["fit", path, "--likelihood", likelihood, "--out", str(tmp_path)]) == 2
    _assert_one_line_error(capsys, "'y'")


def test_missing_file_and_bad_options(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "absent.csv"), "--out", str(tmp_path)]) == 2
    _assert_one_line_error(capsys, "absent.csv")
    assert main(["fit", "--steps", "0", "--out", str(tmp_path)]) == 2
    _assert_one_line_error(capsys, "--steps")
    assert main(["fit", "--test-fraction", "1.5", "--out", str(tmp_path)]) == 2
    _assert_one_line_error(capsys, "--test-fraction")
