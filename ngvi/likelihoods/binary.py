"""Binary classification likelihoods: probit and logit, labels in {0, 1} or {-1, +1}."""

import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc, ndtr
from jaxtyping import Array, ArrayLike

from .._validation import check_finite
from .base import AbstractLikelihood, Vector
from .logistic_expectations import expected_log_sigmoid, expected_sigmoid, logistic_statistics


def _binary_labels(y: ArrayLike, name: str) -> np.ndarray:
    """Map labels in {0, 1} or {-1, +1} to {0., 1.}; raise on anything else."""
    y = check_finite(y, "y")
    flat = y.ravel()
    bad = np.flatnonzero(~np.isin(flat, (-1.0, 0.0, 1.0)))
    if bad.size:
        raise ValueError(
            f"{name} labels must be in {{0, 1}} or {{-1, +1}}; found {flat[bad[0]]:g} "
            f"at index {int(bad[0])}."
        )
    if np.any(flat == -1) and np.any(flat == 0):
        raise ValueError(f"{name} labels mix the {{0, 1}} and {{-1, +1}} encodings.")
    return (y > 0).astype(float)


# Where the continued fraction takes over, and its length: (switch, terms) per precision, so
# that the fraction is exact to rounding at the switch (1e-8 relative for float32 at t = 5
# with 10 terms; 2e-16 for float64 at t = 7 with 18) and the body's gap `x + r` has lost at
# most ~1e3 ulps to cancellation there.
_MILLS_RULE = {32: (-5.0, 10), 64: (-7.0, 18)}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _mills_tail_gap(t: Array, terms: int) -> Array:
    r"""$g(t) = r(-t) - t = 1/(t + 2/(t + 3/(t + \dots)))$ for $t \ge 5$, Laplace's continued
    fraction truncated after `terms` partial numerators.

    Written as $g = u / (1 + 2u^2 / (1 + 3u^2 / (1 + \dots)))$ with $u = 1/t$ and evaluated by
    the forward (Wallis) recurrence $P_k = P_{k-1} + a_k P_{k-2}$, $Q_k = Q_{k-1} + a_k
    Q_{k-2}$, $a_k = k u^2$: two multiply-adds per term and one division, where the backward
    evaluation divides once per term (`where` evaluates this for every element, so the
    divisions were a third of the probit's quadrature). Every term is positive, so the
    recurrence is stable, and with $u \le 1/5$ the denominators stay below 15 (at the
    switch; they fall towards 1 as $t$ grows): no overflow for any $t$.
    """
    u = 1 / t
    u2 = u * u
    p_before, p = jnp.zeros_like(u), u  # P_0 = 0, P_1 = u
    q_before, q = jnp.ones_like(u), jnp.ones_like(u)  # Q_0 = Q_1 = 1
    for k in range(2, terms + 1):
        p_before, p = p, p + (k * u2) * p_before
        q_before, q = q, q + (k * u2) * q_before
    return p / q


def _probit_parts(x: Array) -> tuple[Array, Array, Array]:
    r"""$\log\Phi(x)$, $r(x) = \phi(x) / \Phi(x) = \partial_x \log\Phi(x)$ and the gap
    $x + r(x)$ (so $\partial_x^2 \log\Phi = -r (x + r)$), stable for every $x$ and sharing one
    `erfc`.

    In the body: $c = \Phi(-|x|) = \tfrac12 \operatorname{erfc}(|x| / \sqrt2)$, $\log\Phi(x)
    = \log c$ ($x \le 0$) or $\operatorname{log1p}(-c)$ ($x > 0$), and $r = \phi(x) / \Phi(x)$.
    Further out (below -7 in float64, -5 in float32) the gap cancels catastrophically, so it
    comes from Laplace's continued fraction (`_mills_tail_gap`), $r(-t) = t + g(t)$, and
    $\log\Phi = \log\phi - \log r$; that logarithm and the body's $\log c$ are one `log`.
    (One `erfc` where `jax.scipy.special.log_ndtr` evaluates several branches, each with its
    own `erf`/`erfc`. `log_ndtr` also loses relative accuracy just below its switch at 8,
    where $\log\Phi \approx -\Phi(-x)$. `jax.scipy.special.erfcx` is avoided: it returns 0
    near its internal switch points.)
    """
    x = jnp.asarray(x)
    switch, terms = _MILLS_RULE[64 if jnp.finfo(x.dtype).bits > 32 else 32]
    tail = x < switch
    t = jnp.where(tail, -x, -switch)
    tail_gap = _mills_tail_gap(t, terms)
    body = jnp.where(tail, switch, x)
    c = 0.5 * erfc(jnp.abs(body) * (1 / math.sqrt(2)))
    positive = body > 0
    body_r = jnp.exp(-0.5 * body * body) * _INV_SQRT_2PI / jnp.where(positive, 1 - c, c)
    r = jnp.where(tail, t + tail_gap, body_r)
    log_r_or_c = jnp.log(jnp.where(tail, r, c))
    body_log_cdf = jnp.where(positive, jnp.log1p(-c), log_r_or_c)
    log_cdf = jnp.where(tail, -0.5 * x * x - _LOG_SQRT_2PI - log_r_or_c, body_log_cdf)
    return log_cdf, r, jnp.where(tail, tail_gap, x + body_r)


@jax.custom_jvp
def _inverse_mills(x):
    return _probit_parts(x)[1]


@_inverse_mills.defjvp
def _inverse_mills_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    _, r, gap = _probit_parts(x)
    return r, -r * gap * dx


@jax.custom_jvp
def _log_ndtr(x):
    return _probit_parts(x)[0]


@_log_ndtr.defjvp
def _log_ndtr_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return _log_ndtr(x), _inverse_mills(x) * dx


class Probit(AbstractLikelihood):
    r"""$\log p(y \mid f) = \log \Phi((2y - 1) f)$ for labels $y \in \{0, 1\}$.

    Labels in $\{-1, +1\}$ are accepted by `prepare_targets` and mapped to $\{0, 1\}$.
    No clipping: $\log\Phi$ and its derivatives $r = \phi/\Phi$, $-r(x + r)$ are evaluated
    stably, so they stay finite for $|f|$ up to 40 in float32 and float64. The predictive
    probability is closed-form, $p = \Phi(m / \sqrt{1 + v})$.
    """

    def prepare_targets(self, y: ArrayLike) -> np.ndarray:
        return _binary_labels(y, "Probit")

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        return _log_ndtr((2 * y - 1) * f)

    def derivatives(self, f: Array, y: ArrayLike) -> tuple[Array, Array, Array]:
        r"""$(\log\Phi(s f),\ s\, r,\ -r (s f + r))$ with $s = 2y - 1$, $r = r(s f)$: one
        evaluation of `_probit_parts` per node instead of autodiff through three."""
        sign = 2 * jnp.asarray(y) - 1
        log_cdf, r, gap = _probit_parts(sign * f)
        return log_cdf, sign * r, -r * gap

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        return ndtr(f), ndtr(f) * ndtr(-f)

    def gauss_newton_hessian(self, f: ArrayLike) -> Array:
        # phi^2 / (Phi (1 - Phi)) = r(f) r(-f), finite in the tails.
        return -_inverse_mills(f) * _inverse_mills(-f)

    def predictive_moments(self, mean: Vector, variance: Vector) -> tuple[Vector, Vector]:
        z = mean / jnp.sqrt(1 + variance)
        return ndtr(z), ndtr(z) * ndtr(-z)

    def distribution(self, f: ArrayLike) -> distrax.Distribution:
        return distrax.Bernoulli(probs=ndtr(f))


class BernoulliLogit(AbstractLikelihood):
    r"""$\log p(y \mid f) = \log \sigma((2y - 1) f)$, $\sigma$ the logistic sigmoid.

    Labels as for `Probit`. Conditional moments $(\sigma(f), \sigma(f)\sigma(-f))$; the
    Gauss-Newton curvature $-\sigma(f)\sigma(-f)$ equals the exact Hessian. Expectations under
    $q(f)$ use `ngvi.likelihoods.logistic_expectations`: Gauss-Hermite where the latent standard
    deviation is at most 0.6, elsewhere a closed-form piecewise-linear part plus a quadrature
    in $f$ of the remainder, accurate to ~1e-13 at any variance (20-node Gauss-Hermite alone is
    off by 2.5e-3 at a standard deviation of 5).
    """

    def prepare_targets(self, y: ArrayLike) -> np.ndarray:
        return _binary_labels(y, "BernoulliLogit")

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        return jax.nn.log_sigmoid((2 * y - 1) * f)

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        return jax.nn.sigmoid(f), jax.nn.sigmoid(f) * jax.nn.sigmoid(-f)

    def gauss_newton_hessian(self, f: ArrayLike) -> Array:
        return -jax.nn.sigmoid(f) * jax.nn.sigmoid(-f)

    def expected_log_prob(self, y: Vector, mean: Vector, variance: Vector) -> Vector:
        return expected_log_sigmoid((2 * y - 1) * mean, variance, self.num_quadrature_points)

    def expected_derivatives(
        self, y: Vector, mean: Vector, variance: Vector
    ) -> tuple[Vector, Vector, Vector]:
        sign = 2 * y - 1
        value, grad, hess = logistic_statistics(sign * mean, variance, self.num_quadrature_points)
        return value, sign * grad, hess

    def gauss_newton_derivatives(
        self, y: Vector, mean: Vector, variance: Vector
    ) -> tuple[Vector, Vector, Vector]:
        return self.expected_derivatives(y, mean, variance)

    def predictive_moments(self, mean: Vector, variance: Vector) -> tuple[Vector, Vector]:
        p = expected_sigmoid(mean, variance, self.num_quadrature_points)
        return p, p * (1 - p)

    def distribution(self, f: ArrayLike) -> distrax.Distribution:
        return distrax.Bernoulli(logits=f)
