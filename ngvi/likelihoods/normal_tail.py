r"""$\log\Phi(x)$, the inverse Mills ratio $r(x) = \phi(x) / \Phi(x)$ and the gap $x + r(x)$,
from one rational function: the probit likelihood's statistics at every quadrature node.

Write $u = |x|$ and $g(u) = r(-u) - u \ge 0$, the gap on the lower side ($g(0) =
\sqrt{2/\pi}$, $g(u) = 1/u - 2/u^3 + \dots$ as $u \to \infty$). With $w = 1/(u + K)$ and $y =
1 - 2Kw = (u - K)/(u + K) \in [-1, 1)$, the function $G(y) = (u + K)\, g(u)$ is analytic on
$[-1, 1]$ (it tends to 1 at $y = 1$ like $1 + Kw + O(w^2)$), and with $K = 4$ a rational
$P(y) / Q(y)$ of degrees (10, 10) matches it to $6 \cdot 10^{-17}$ relative ($Q \ge 0.98$ on
$[-1, 1]$, coefficients at most 2.6, so Horner's rule adds only rounding). Then, with $s = u
+ g(u) = r(-u)$ and $\Phi(-u) = \phi(u) / s$,

- $x \le 0$: $\log\Phi(x) = -u^2/2 - \log\sqrt{2\pi} - \log s$, $r(x) = s$, gap $= g$;
- $x > 0$: $c = \phi(u)/s$, $\log\Phi(x) = \operatorname{log1p}(-c)$, $r(x) = \phi(u)/(1 - c)$,
  gap $= u + r(x)$;

each without cancellation (the gap, which cancels catastrophically as $r - u$, comes from the
rational function itself). Per element: one `exp`, five divisions, two interleaved Horner
chains of 10 steps and one of 11 (`vectorised_log1p`, arithmetic: XLA's float64 `log` inside the
quadrature's fusion cost more than all the rest). XLA's `erfc` alone evaluates three rational
approximations and selects among them; a Chebyshev series of $G$ needs 27 terms for the same
accuracy and, by Clenshaw's recurrence, costs more than the whole of this function.

The coefficients come from `tools/fit_normal_tail_rational.py` (linearised least squares with
Loeb's reweighting, in 50-digit arithmetic with mpmath); the tests check the result against
scipy's `log_ndtr` and `erfcx` and against the asymptotic series, independently of that fit.
"""

import math

import jax.numpy as jnp
from jaxtyping import Array, Float

from .elementwise import horner, vectorised_log1p

_K = 4.0
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)

# G(y) = P(y) / Q(y), coefficients of y^0 ... y^10 (max relative error 6.3e-17 on [-1, 1]).
_GAP_NUMERATOR = (
    1.8048571559157685,
    -1.6618056929957719,
    2.593282537238087,
    -1.5884541388307187,
    1.2169667660058872,
    -0.49689600432347186,
    0.2185609075244381,
    -0.054516695868178054,
    0.012621742231102462,
    -0.001466225586986056,
    0.0001036969729430925,
)
_GAP_DENOMINATOR = (
    1.0,
    -0.26572806047531566,
    1.0400717408605484,
    -0.17706852670322645,
    0.41318374977834404,
    -0.04316780211567432,
    0.07450114776125664,
    -0.004046738127760168,
    0.0054975394020890375,
    -9.863931126871641e-05,
    0.00010963721410702819,
)


def lower_gap(u: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    r"""$g(u) = r(-u) - u = \phi(u)/\Phi(-u) - u$ for $u \ge 0$, relatively accurate to
    rounding for every finite $u$; $g(\infty) = 0$."""
    y = 1 - (2 * _K) / (u + _K)
    return horner(y, _GAP_NUMERATOR) / (horner(y, _GAP_DENOMINATOR) * (u + _K))


def probit_parts(
    x: Float[Array, "*shape"],
) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"], Float[Array, "*shape"]]:
    r"""$(\log\Phi(x),\ r(x),\ x + r(x))$, so that $\partial_x \log\Phi = r$ and
    $\partial_x^2 \log\Phi = -r\,(x + r)$; relatively accurate for every $x$ (see the module
    docstring), finite for finite $x$."""
    x = jnp.asarray(x)
    u = jnp.abs(x)
    gap = lower_gap(u)
    s = u + gap  # r(-u)
    density = jnp.exp(-0.5 * u * u) * _INV_SQRT_2PI
    upper_tail = density / s  # Phi(-u)
    positive = x > 0
    log1p_part = vectorised_log1p(jnp.where(positive, -upper_tail, s - 1))  # log Phi(x) or log s
    log_cdf = jnp.where(positive, log1p_part, -0.5 * u * u - _LOG_SQRT_2PI - log1p_part)
    r = jnp.where(positive, density / (1 - upper_tail), s)
    return log_cdf, r, jnp.where(positive, u + r, gap)
