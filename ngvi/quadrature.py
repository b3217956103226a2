"""Gauss-Hermite expectations of functions of independent 1-D Gaussians."""

from collections.abc import Callable
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree


@lru_cache(maxsize=32)
def _hermite_rule(num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss-Hermite nodes and weights, the weights normalised to sum to one."""
    if num_points < 1:
        raise ValueError(f"`num_points` must be a positive integer, got {num_points}.")
    with np.errstate(all="ignore"):
        nodes, weights = np.polynomial.hermite_e.hermegauss(num_points)
    if not np.all(np.isfinite(weights)):
        # numpy's rule overflows beyond ~300 nodes (NaN weights at 400). Golub-Welsch: the nodes
        # are the eigenvalues of the Jacobi matrix of the probabilists' Hermite recurrence
        # (off-diagonal sqrt(k)), the weights the squared first components of its eigenvectors.
        jacobi = np.diag(np.sqrt(np.arange(1.0, num_points)), 1)
        nodes, vectors = np.linalg.eigh(jacobi + jacobi.T)
        weights = vectors[0] ** 2
    return nodes, weights / weights.sum()


def gauss_hermite_expectation(
    fn: Callable[[Float[Array, "q n"]], PyTree[Float[Array, "q n"]]],
    mean: Float[Array, " n"],
    variance: Float[Array, " n"],
    num_points: int = 20,
) -> PyTree[Float[Array, " n"]]:
    r"""Compute $\mathbb{E}[\mathrm{fn}(f_i)]$ for independent $f_i \sim \mathcal{N}(m_i, v_i)$.

    With the probabilists' Gauss-Hermite rule $(x_k, w_k)_{k=1}^{Q}$, normalised so that
    $\sum_k w_k = 1$,

    $$\mathbb{E}[\mathrm{fn}(f_i)] \approx \sum_{k=1}^{Q} w_k\,\mathrm{fn}(m_i + \sqrt{v_i}\,x_k),$$

    which is exact when `fn` is a polynomial of degree at most $2Q - 1$.

    **Arguments:**

    - `fn`: maps one node per point, an array shaped like `mean`, to an array (or a pytree of
        arrays) of that shape; it may depend on the index, e.g. through per-point data. It is
        vmapped over the `num_points` nodes.
    - `mean`: the means $m_i$, shape `(n,)`.
    - `variance`: the variances $v_i \ge 0$, shape `(n,)`; negative round-off is clamped to 0.
    - `num_points`: the number of quadrature nodes $Q$ (a Python int).

    **Returns:**

    The weighted sum over axis 0: an array (or pytree of arrays) of shape `(n,)`.

    **Example:**

    ```python
    m, v = jnp.array([0.0, 1.0]), jnp.array([1.0, 0.5])
    gauss_hermite_expectation(jnp.exp, m, v)  # == exp(m + v / 2)
    ```
    """
    mean = jnp.asarray(mean)
    dtype = mean.dtype if jnp.issubdtype(mean.dtype, jnp.floating) else jnp.result_type(float)
    mean = mean.astype(dtype)
    variance = jnp.asarray(variance, dtype)
    nodes, weights = _hermite_rule(int(num_points))
    nodes = jnp.asarray(nodes, dtype)
    weights = jnp.asarray(weights, dtype)
    std = jnp.sqrt(jnp.maximum(variance, 0.0))
    f = mean[None, ...] + std[None, ...] * nodes.reshape((-1,) + (1,) * mean.ndim)
    values = jax.vmap(fn)(f)
    return jax.tree_util.tree_map(lambda value: jnp.tensordot(weights, value, axes=1), values)


@lru_cache(maxsize=32)
def sobol_normal(count: int, dimension: int, seed: int) -> np.ndarray:
    """`count` quasi-random standard normal points in `dimension` dimensions, `(count,
    dimension)`: a scrambled Sobol' sequence (`scipy.stats.qmc.Sobol`: linear matrix
    scrambling and a digital shift, seeded) through the normal quantile. For smooth integrands
    its error falls nearly like `1 / count` instead of Monte Carlo's `1 / sqrt(count)`:
    softmax class probabilities from 1,024 points were off by about 3e-4 (3 classes) to 1e-3
    (20 classes), against 5e-3 to 7e-3 from 1,024 antithetic normal draws. `count` should be a
    power of 2 (the sequence's balance)."""
    from scipy.stats import norm, qmc  # imported when first needed

    points = qmc.Sobol(dimension, scramble=True, seed=seed).random(count)
    return norm.ppf(np.clip(points, 1e-300, 1.0 - 2**-53))
