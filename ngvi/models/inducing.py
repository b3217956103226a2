"""Choosing inducing inputs: k-means centres of (a subsample of) the inputs."""

import numpy as np


def kmeans_inducing(X: np.ndarray, num_inducing: int, seed: int = 0, iterations: int = 25):
    """`num_inducing` k-means centres of the rows of `X`, reproducible for a `seed`.

    k-means places the inducing inputs where the data's mass is, which for the same `M` gives a
    tighter bound than a random subset (the Nystrom error `k(x, x) - q(x, x)` is small near the
    data). k-means++ seeding, then Lloyd iterations on a random subsample of at most
    `max(50 M, 20000)` rows, so the cost does not grow with `N`. With `M >= N` the inputs
    themselves are returned. Repeated points are dropped (first occurrences kept, in order):
    on inputs with fewer than `M` distinct rows k-means++ placed several centres on one point,
    which only add cost (`inducing=5` on two distinct inputs gave five inducing inputs at two
    places), so fewer than `M` may come back.
    """
    X = np.asarray(X, dtype=float)
    n = X.shape[0]
    if num_inducing >= n:
        return _distinct(X)
    rng = np.random.default_rng(seed)
    size = min(n, max(50 * num_inducing, 20000))
    sample = X[rng.choice(n, size=size, replace=False)] if size < n else X
    centres = _kmeans_plus_plus(sample, num_inducing, rng)
    for _ in range(iterations):
        labels = _nearest(sample, centres)
        counts = np.bincount(labels, minlength=num_inducing)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, sample)
        filled = counts > 0
        moved = centres.copy()
        moved[filled] = sums[filled] / counts[filled, None]
        if np.allclose(moved, centres):
            break
        centres = moved
    return _distinct(centres)


def _distinct(points: np.ndarray) -> np.ndarray:
    """The rows of `points` without repeats, in the order of their first occurrence."""
    _, first = np.unique(points, axis=0, return_index=True)
    return points[np.sort(first)]


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d2 = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None, :]
    return np.argmin(d2, axis=1)


def _kmeans_plus_plus(points: np.ndarray, k: int, rng) -> np.ndarray:
    centres = [points[rng.integers(points.shape[0])]]
    d2 = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        index = (
            rng.choice(points.shape[0], p=d2 / total)
            if total > 0
            else rng.integers(points.shape[0])
        )
        centres.append(points[index])
        d2 = np.minimum(d2, ((points - points[index]) ** 2).sum(1))
    return np.stack(centres)
