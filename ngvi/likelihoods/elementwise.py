"""Elementwise functions written as plain arithmetic, so that XLA vectorises them inside the
quadrature's fusions (its float64 `log` there cost several times its cost alone)."""

import math

import jax.numpy as jnp
from jaxtyping import Array, Float


def horner(y: Float[Array, "*shape"], coefficients: tuple[float, ...]) -> Float[Array, "*shape"]:
    r"""$\sum_k a_k y^k$ by Horner's rule."""
    total = jnp.full_like(y, coefficients[-1])
    for a in coefficients[-2::-1]:
        total = total * y + a
    return total


# Series terms of atanh(s) / s = sum_j s^(2j) / (2j + 1) kept per precision: with |s| <= 0.1716
# the first omitted term is below 2e-17 (float64, j = 11) and 2e-9 (float32, j = 6).
_ATANH_TERMS = {64: 11, 32: 6}


def vectorised_log1p(v: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    r"""$\log(1 + v)$ for $v \ge -1/2$ (or $+\infty$), relatively accurate to a few ulps.

    $1 + v = m\,2^k$ with $m \in [\sqrt{1/2}, \sqrt2)$ (`frexp`), $f = m - 1$ (or $f = v$
    itself when $k = 0$, so that small $v$ keep their relative accuracy), and $\log(1 + f) =
    2\operatorname{atanh}(s)$, $s = f / (2 + f)$, $|s| \le 0.1716$, by its series; then $\log(1
    + v) = k \log 2 + \log(1 + f)$. Rounding $1 + v$ moves the result by at most
    $\epsilon/2$ (absolute) when $k \ne 0$, where $|\log(1 + v)| > 0.34$. Arithmetic only:
    XLA's own `log`/`log1p` were most of the probit step (a sparse banana step, M = 16: 2.0
    ms with them, 1.2 ms without).
    """
    one_plus_v = 1 + v
    mantissa, exponent = jnp.frexp(one_plus_v)  # mantissa in [1/2, 1)
    low = mantissa < math.sqrt(0.5)
    mantissa = jnp.where(low, 2 * mantissa, mantissa)
    exponent = (exponent - low.astype(exponent.dtype)).astype(v.dtype)
    f = jnp.where(exponent == 0, v, mantissa - 1)
    s = f / (2 + f)
    terms = _ATANH_TERMS[64 if jnp.finfo(v.dtype).bits > 32 else 32]
    series = horner(s * s, tuple(1 / (2 * j + 1) for j in range(terms)))
    result = exponent * math.log(2) + 2 * s * series
    return jnp.where(one_plus_v == jnp.inf, jnp.inf, result)
