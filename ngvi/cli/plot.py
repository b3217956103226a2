"""The figure `ngvi fit` writes: a decision surface for 2-D inputs, otherwise a calibration
plot (classification) or predicted-versus-true plot (regression, counts)."""

from collections.abc import Callable
from pathlib import Path

import numpy as np


def plot(
    path: Path,
    likelihood: str,
    X: np.ndarray,
    labels: np.ndarray,
    mean: np.ndarray,
    variance: np.ndarray,
    test: np.ndarray,
    names: list[str],
    predict_mean: Callable[[np.ndarray], np.ndarray],
) -> Path:
    """Draw the figure to `path` (PNG) and return `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    classify = likelihood in ("probit", "logit")
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    if X.shape[1] == 2:
        _surface(ax, X, labels, is_test, names, predict_mean, classify)
    elif classify:
        _calibration(ax, labels[is_test], mean[is_test])
    else:
        _predicted_vs_true(ax, labels[is_test], mean[is_test], variance[is_test], likelihood)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _surface(ax, X, labels, is_test, names, predict_mean, classify) -> None:
    pad = 0.05 * (X.max(axis=0) - X.min(axis=0))
    lows, highs = X.min(axis=0) - pad, X.max(axis=0) + pad
    g1, g2 = np.meshgrid(np.linspace(lows[0], highs[0], 80), np.linspace(lows[1], highs[1], 80))
    grid = np.stack([g1.ravel(), g2.ravel()], axis=1)
    surface = predict_mean(grid).reshape(g1.shape)
    if classify:
        filled = ax.contourf(g1, g2, surface, levels=np.linspace(0, 1, 11), cmap="RdBu_r")
        ax.contour(g1, g2, surface, levels=[0.5], colors="k", linewidths=1.5)
        label = "P(y = 1)"
    else:
        filled = ax.contourf(g1, g2, surface, levels=20, cmap="viridis")
        label = "predictive mean"
    ax.figure.colorbar(filled, ax=ax, label=label)
    colours = labels if classify else None
    for mask, marker, name in ((~is_test, "o", "train"), (is_test, "^", "test")):
        ax.scatter(
            X[mask, 0],
            X[mask, 1],
            c=None if colours is None else colours[mask],
            cmap="RdBu_r",
            vmin=0,
            vmax=1,
            marker=marker,
            s=18,
            edgecolors="k",
            linewidths=0.5,
            label=name,
        )
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.legend(loc="best")
    ax.set_title("ngvi fit: predictive surface")


def _calibration(ax, labels, probability, num_bins: int = 10) -> None:
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(probability, edges) - 1, 0, num_bins - 1)
    centres, frequencies, counts = [], [], []
    for b in range(num_bins):
        chosen = which == b
        if np.any(chosen):
            centres.append(probability[chosen].mean())
            frequencies.append(labels[chosen].mean())
            counts.append(chosen.sum())
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.scatter(centres, frequencies, s=20 + 10 * np.asarray(counts), label="test bins")
    ax.set_xlabel("predicted P(y = 1)")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("ngvi fit: calibration on the test split")


def _predicted_vs_true(ax, truth, mean, variance, likelihood) -> None:
    ax.errorbar(
        truth,
        mean,
        yerr=2 * np.sqrt(variance),
        fmt="o",
        ms=3,
        alpha=0.7,
        label="test: mean +- 2 sd",
    )
    low, high = min(truth.min(), mean.min()), max(truth.max(), mean.max())
    ax.plot([low, high], [low, high], "k--", lw=1)
    ax.set_xlabel("observed")
    ax.set_ylabel("predicted rate" if likelihood == "poisson" else "predicted mean")
    ax.legend(loc="upper left")
    ax.set_title("ngvi fit: predicted versus observed (test split)")
