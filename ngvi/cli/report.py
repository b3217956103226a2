"""Held-out metrics, the printed summary and the predictions file of `ngvi fit`."""

import csv

import numpy as np


def poisson_log_predictive(y, mean, variance, num_points=40):
    """`log int Poisson(y | exp f) N(f | m, v) df` by Gauss-Hermite quadrature (probabilists')."""
    from scipy.special import gammaln, logsumexp

    nodes, weights = np.polynomial.hermite_e.hermegauss(num_points)
    f = mean[:, None] + np.sqrt(variance)[:, None] * nodes[None, :]
    log_p = y[:, None] * f - np.exp(f) - gammaln(y + 1.0)[:, None]
    return logsumexp(log_p + np.log(weights / weights.sum())[None, :], axis=1)


def metrics(likelihood: str, y, mean, variance) -> dict[str, float]:
    """Held-out metrics from predictive means/variances of `y*` (probabilities for classes)."""
    if likelihood == "softmax":  # `mean`: class probabilities (m, C); `y`: class indices
        picked = np.clip(mean[np.arange(len(y)), y.astype(int)], 1e-12, 1.0)
        return {
            "accuracy": float(np.mean(np.argmax(mean, axis=1) == y)),
            "nlpd": float(-np.mean(np.log(picked))),
        }
    if likelihood in ("probit", "logit"):
        p = np.clip(mean, 1e-12, 1.0 - 1e-12)
        log_p = np.where(y > 0.5, np.log(p), np.log1p(-p))
        return {
            "accuracy": float(np.mean((mean > 0.5) == (y > 0.5))),
            "nlpd": float(-np.mean(log_p)),
        }
    if likelihood == "gaussian":
        nlpd = 0.5 * (np.log(2 * np.pi * variance) + (y - mean) ** 2 / variance)
        return {"rmse": float(np.sqrt(np.mean((y - mean) ** 2))), "nlpd": float(np.mean(nlpd))}
    raise AssertionError(likelihood)


def report(result, names, scores) -> None:
    model = result.model
    print(f"  {result.num_steps} steps, {result.message}; final ELBO {float(result.elbo):.6g}")
    kernel = getattr(model.prior, "kernel", None)
    if kernel is not None:
        scales = np.atleast_1d(np.asarray(kernel.lengthscale))
        pairs = ", ".join(
            f"{n}={s:.3g}" for n, s in zip(names, np.broadcast_to(scales, len(names)), strict=True)
        )
        print(
            f"  kernel variance {float(kernel.variance):.4g}; lengthscales (standardised) {pairs}"
        )
    if hasattr(model.likelihood, "variance"):
        print(f"  noise variance (standardised target) {float(model.likelihood.variance):.4g}")
    print("  held-out: " + ", ".join(f"{name} {value:.4f}" for name, value in scores.items()))


def write_predictions(path, X, labels, names, target, test, columns: dict) -> None:
    """`predictions.csv`: the inputs and the target as read (`labels`: the user's values),
    the split, and the prediction columns."""
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, target, "split", *columns])
        for i in range(len(labels)):
            inputs = [_exact(value) for value in (*X[i], labels[i])]
            outputs = [_cell(column[i]) for column in columns.values()]
            writer.writerow([*inputs, "test" if is_test[i] else "train", *outputs])


def _exact(value) -> str:
    """An input value as read: text as it is, a number in the fewest digits that read back
    as the same float (`1` for `1.0`)."""
    if isinstance(value, str):
        return value
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _cell(value) -> str:
    return value if isinstance(value, str) else f"{value:.12g}"
