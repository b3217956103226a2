r"""Factorised likelihoods $p(y \mid f) = \prod_i p(y_i \mid f_i)$ and their expectations.

Everything is about $\log p(y_i \mid f_i)$: its gradient $g = \partial_f \log p$ and Hessian
$H = \partial_f^2 \log p$ (negative for log-concave likelihoods). Expectations are under
independent marginals $f_i \sim \mathcal{N}(m_i, v_i)$ of the variational posterior.
"""

import abc

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, log_ndtr, ndtr
from jaxtyping import Array, ArrayLike, Float

from ._validation import check_finite, check_positive
from .quadrature import gauss_hermite_expectation

_Vector = Float[Array, " n"]


class AbstractLikelihood(eqx.Module):
    r"""A factorised likelihood. Subclass it and write `log_prob`; the rest is derived.

    The expectations $\mathbb{E}_q[\log p]$, $\mathbb{E}_q[g]$ and $\mathbb{E}_q[H]$ default to
    Gauss-Hermite quadrature (with `num_quadrature_points` nodes) of `log_prob` and of its
    first and second derivatives by autodiff. Subclasses override them with closed forms
    where those exist.

    **Example:**

    ```python
    class Laplace(AbstractLikelihood):
        scale: float = 1.0

        def log_prob(self, f, y):
            return -jnp.abs(y - f) / self.scale - jnp.log(2 * self.scale)
    ```
    """

    num_quadrature_points: int = eqx.field(default=20, static=True, kw_only=True)

    @abc.abstractmethod
    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        r"""Elementwise $\log p(y_i \mid f_i)$ for broadcastable arrays `f` and `y`."""

    def prepare_targets(self, y: ArrayLike) -> np.ndarray:
        """Validate the support of `y` on the host and return it in the internal encoding.

        Runs once, before compilation. Raises `ValueError` with a message naming the bad value.
        """
        return check_finite(y, "y")

    def expected_log_prob(self, y: _Vector, mean: _Vector, variance: _Vector) -> _Vector:
        r"""$\mathbb{E}_{\mathcal{N}(f_i \mid m_i, v_i)}[\log p(y_i \mid f_i)]$, shape `(n,)`."""
        return gauss_hermite_expectation(
            lambda f: self.log_prob(f, y), mean, variance, self.num_quadrature_points
        )

    def _value_and_grad(self, f: Array, y: ArrayLike) -> tuple[Array, Array]:
        log_p, vjp = jax.vjp(lambda f: self.log_prob(f, y), f)
        (grad,) = vjp(jnp.ones_like(log_p))
        return log_p, grad

    def expected_derivatives(
        self, y: _Vector, mean: _Vector, variance: _Vector
    ) -> tuple[_Vector, _Vector, _Vector]:
        r"""$(\mathbb{E}_q[\log p],\ \mathbb{E}_q[g],\ \mathbb{E}_q[H])$, each of shape `(n,)`.

        Because `log_prob` is elementwise, $g$ is the gradient of $\sum_i \log p(y_i \mid f_i)$
        and the diagonal Hessian is its forward derivative along a tangent of ones. All three
        come from one quadrature pass. By Bonnet's and Price's theorems,
        $\partial_m \mathbb{E}_q[\log p] = \mathbb{E}_q[g]$ and
        $\partial_v \mathbb{E}_q[\log p] = \tfrac12 \mathbb{E}_q[H]$.
        """

        def integrand(f):
            (log_p, grad), (_, hess) = jax.jvp(
                lambda f: self._value_and_grad(f, y), (f,), (jnp.ones_like(f),)
            )
            return log_p, grad, hess

        return gauss_hermite_expectation(integrand, mean, variance, self.num_quadrature_points)

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        r"""The conditional mean and variance $(\mu(f), \sigma^2(f))$ of $y$ given $f$."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define `conditional_moments`, which Gauss-Newton "
            "curvature and predictive moments need."
        )

    def gauss_newton_hessian(self, f: ArrayLike) -> Array:
        r"""The pointwise statistical-linearisation curvature $-\mu'(f)^2 / \sigma^2(f) \le 0$.

        Computed from `conditional_moments` (the derivative by autodiff); entries where
        $\sigma^2(f) = 0$ give 0. Subclasses override it with a stable closed form.
        """
        f = jnp.asarray(f)
        (mean, var), (dmean, _) = jax.jvp(self.conditional_moments, (f,), (jnp.ones_like(f),))
        positive = var > 0
        return -jnp.where(positive, dmean**2 / jnp.where(positive, var, 1.0), 0.0)

    def gauss_newton_derivatives(
        self, y: _Vector, mean: _Vector, variance: _Vector
    ) -> tuple[_Vector, _Vector, _Vector]:
        r"""$(\mathbb{E}_q[\log p],\ \mathbb{E}_q[g],\ \mathbb{E}_q[H_{GN}])$ with

        $$H_{GN}(f) = -\frac{\mu'(f)^2}{\sigma^2(f)} \le 0,$$

        the Gauss-Newton (generalised / Fisher) curvature of the conditional mean
        $\mu(f) = \mathbb{E}[y \mid f]$ and variance $\sigma^2(f) = \mathrm{Var}[y \mid f]$.
        It equals the expected Hessian $\mathbb{E}_{y \mid f}[H]$ for exponential families in
        their canonical link, and is never positive, so the resulting precision stays PD even
        for non-log-concave likelihoods.
        """

        def integrand(f):
            log_p, grad = self._value_and_grad(f, y)
            return log_p, grad, self.gauss_newton_hessian(f)

        return gauss_hermite_expectation(integrand, mean, variance, self.num_quadrature_points)

    def predictive_moments(self, mean: _Vector, variance: _Vector) -> tuple[_Vector, _Vector]:
        r"""$(\mathbb{E}[y_i],\ \mathrm{Var}[y_i])$ when $f_i \sim \mathcal{N}(m_i, v_i)$.

        By the laws of total expectation and variance,
        $\mathbb{E}[y] = \mathbb{E}_q[\mu(f)]$ and
        $\mathrm{Var}[y] = \mathbb{E}_q[\sigma^2(f)] + \mathrm{Var}_q[\mu(f)]$.
        """
        n = self.num_quadrature_points
        y_mean = gauss_hermite_expectation(
            lambda f: self.conditional_moments(f)[0], mean, variance, n
        )

        def spread(f):
            mu, var = self.conditional_moments(f)
            return var + (mu - y_mean) ** 2

        return y_mean, gauss_hermite_expectation(spread, mean, variance, n)

    def distribution(self, f: ArrayLike) -> distrax.Distribution:
        """The distribution of `y` given the latent `f`, for sampling."""
        raise NotImplementedError(f"{type(self).__name__} does not define `distribution`.")


class Gaussian(AbstractLikelihood):
    r"""$\log p(y \mid f) = -\tfrac12 \log(2\pi\sigma^2) - (y - f)^2 / (2\sigma^2)$.

    All expectations are closed-form:

    $$\mathbb{E}_q[\log p] = -\tfrac12\log(2\pi\sigma^2) - \frac{(y - m)^2 + v}{2\sigma^2},
    \quad \mathbb{E}_q[g] = \frac{y - m}{\sigma^2}, \quad \mathbb{E}_q[H] = -\frac{1}{\sigma^2}.$$

    The noise variance is stored by its logarithm, so it is positive by construction.
    """

    log_variance: Float[Array, ""]

    def __init__(self, variance: ArrayLike = 1.0, *, num_quadrature_points: int = 20):
        check_positive(variance, "variance")
        self.log_variance = jnp.log(jnp.asarray(variance, dtype=float))
        self.num_quadrature_points = num_quadrature_points

    @property
    def variance(self) -> Float[Array, ""]:
        return jnp.exp(self.log_variance)

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        return -0.5 * (jnp.log(2 * jnp.pi) + self.log_variance + (y - f) ** 2 / self.variance)

    def expected_log_prob(self, y: _Vector, mean: _Vector, variance: _Vector) -> _Vector:
        return -0.5 * (
            jnp.log(2 * jnp.pi) + self.log_variance + ((y - mean) ** 2 + variance) / self.variance
        )

    def expected_derivatives(
        self, y: _Vector, mean: _Vector, variance: _Vector
    ) -> tuple[_Vector, _Vector, _Vector]:
        hess = jnp.broadcast_to(-1.0 / self.variance, jnp.shape(mean))
        return self.expected_log_prob(y, mean, variance), (y - mean) / self.variance, hess

    def gauss_newton_derivatives(
        self, y: _Vector, mean: _Vector, variance: _Vector
    ) -> tuple[_Vector, _Vector, _Vector]:
        return self.expected_derivatives(y, mean, variance)

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        f = jnp.asarray(f)
        return f, jnp.broadcast_to(self.variance, f.shape)

    def predictive_moments(self, mean: _Vector, variance: _Vector) -> tuple[_Vector, _Vector]:
        return mean, variance + self.variance

    def distribution(self, f: ArrayLike) -> distrax.Distribution:
        return distrax.Normal(f, jnp.sqrt(self.variance))


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


_MILLS_SWITCH = -5.0
_MILLS_TERMS = 30


def _inverse_mills_and_gap(x: Array) -> tuple[Array, Array]:
    r"""$r(x) = \phi(x) / \Phi(x) = \partial_x \log\Phi(x)$ and $x + r(x)$, both stable.

    For $x < -5$ the gap $x + r(x)$ cancels catastrophically, so it comes from Laplace's
    continued fraction $r(-t) = t + 1/(t + 2/(t + 3/(t + \dots)))$ (30 terms: float64 accuracy
    for $t \ge 5$). Elsewhere $r = \exp(\log\phi(x) - \log\Phi(x))$. (`jax.scipy.special.erfcx`
    is avoided: it returns 0 near its internal switch points, 9.2 in float32, 26.6 in float64.)
    """
    tail = x < _MILLS_SWITCH
    t = jnp.where(tail, -x, -_MILLS_SWITCH)
    acc = t
    for k in range(_MILLS_TERMS, 1, -1):
        acc = t + k / acc
    tail_gap = 1 / acc
    x_body = jnp.where(tail, _MILLS_SWITCH, x)
    body_r = jnp.exp(-0.5 * x_body**2 - 0.5 * jnp.log(2 * jnp.pi) - log_ndtr(x_body))
    r = jnp.where(tail, t + tail_gap, body_r)
    return r, jnp.where(tail, tail_gap, x + body_r)


@jax.custom_jvp
def _inverse_mills(x):
    return _inverse_mills_and_gap(x)[0]


@_inverse_mills.defjvp
def _inverse_mills_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    r, gap = _inverse_mills_and_gap(x)
    return r, -r * gap * dx


@jax.custom_jvp
def _log_ndtr(x):
    return log_ndtr(x)


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

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        return ndtr(f), ndtr(f) * ndtr(-f)

    def gauss_newton_hessian(self, f: ArrayLike) -> Array:
        # phi^2 / (Phi (1 - Phi)) = r(f) r(-f), finite in the tails.
        return -_inverse_mills(f) * _inverse_mills(-f)

    def predictive_moments(self, mean: _Vector, variance: _Vector) -> tuple[_Vector, _Vector]:
        z = mean / jnp.sqrt(1 + variance)
        return ndtr(z), ndtr(z) * ndtr(-z)

    def distribution(self, f: ArrayLike) -> distrax.Distribution:
        return distrax.Bernoulli(probs=ndtr(f))


class BernoulliLogit(AbstractLikelihood):
    r"""$\log p(y \mid f) = \log \sigma((2y - 1) f)$, $\sigma$ the logistic sigmoid.

    Labels as for `Probit`. Conditional moments $(\sigma(f), \sigma(f)\sigma(-f))$; the
    Gauss-Newton curvature $-\sigma(f)\sigma(-f)$ equals the exact Hessian.
    """

    def prepare_targets(self, y: ArrayLike) -> np.ndarray:
        return _binary_labels(y, "BernoulliLogit")

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        return jax.nn.log_sigmoid((2 * y - 1) * f)

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        return jax.nn.sigmoid(f), jax.nn.sigmoid(f) * jax.nn.sigmoid(-f)

    def gauss_newton_hessian(self, f: ArrayLike) -> Array:
        return -jax.nn.sigmoid(f) * jax.nn.sigmoid(-f)

    def distribution(self, f: ArrayLike) -> distrax.Distribution:
        return distrax.Bernoulli(logits=f)


class Poisson(AbstractLikelihood):
    r"""$\log p(y \mid f) = y (f + \log e) - e\, \exp(f) - \log y!$ (log link, exposure $e$).

    With $\lambda = \mathbb{E}_q[e^f] = \exp(m + v/2)$, everything is closed-form:
    $\mathbb{E}_q[\log p] = y(m + \log e) - e\lambda - \log y!$,
    $\mathbb{E}_q[g] = y - e\lambda$ and $\mathbb{E}_q[H] = \mathbb{E}_q[H_{GN}] = -e\lambda$.
    `conditional_moments` and `predictive_moments` are per unit exposure: the predictive mean is
    $\lambda$ and the variance $\lambda + (e^v - 1)\lambda^2$.

    `exposure` is an optional positive array broadcast against $f$ (shape `()` or `(n,)`).
    """

    exposure: Float[Array, "..."] | None

    def __init__(self, exposure: ArrayLike | None = None, *, num_quadrature_points: int = 20):
        if exposure is not None:
            check_positive(exposure, "exposure")
            exposure = jnp.asarray(exposure, dtype=float)
        self.exposure = exposure
        self.num_quadrature_points = num_quadrature_points

    def prepare_targets(self, y: ArrayLike) -> np.ndarray:
        y = check_finite(y, "y")
        flat = y.ravel()
        bad = np.flatnonzero((flat < 0) | (flat != np.round(flat)))
        if bad.size:
            raise ValueError(
                "Poisson counts must be non-negative integers; "
                f"found {flat[bad[0]]:g} at index {int(bad[0])}."
            )
        return y

    def _log_exposure(self) -> Array | float:
        return 0.0 if self.exposure is None else jnp.log(self.exposure)

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        log_rate = f + self._log_exposure()
        return y * log_rate - jnp.exp(log_rate) - gammaln(y + 1.0)

    def expected_log_prob(self, y: _Vector, mean: _Vector, variance: _Vector) -> _Vector:
        log_rate = mean + self._log_exposure()
        return y * log_rate - jnp.exp(log_rate + variance / 2) - gammaln(y + 1.0)

    def expected_derivatives(
        self, y: _Vector, mean: _Vector, variance: _Vector
    ) -> tuple[_Vector, _Vector, _Vector]:
        rate = jnp.exp(mean + self._log_exposure() + variance / 2)
        return self.expected_log_prob(y, mean, variance), y - rate, -rate

    def gauss_newton_derivatives(
        self, y: _Vector, mean: _Vector, variance: _Vector
    ) -> tuple[_Vector, _Vector, _Vector]:
        return self.expected_derivatives(y, mean, variance)

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        return jnp.exp(f), jnp.exp(f)

    def predictive_moments(self, mean: _Vector, variance: _Vector) -> tuple[_Vector, _Vector]:
        y_mean = jnp.exp(mean + variance / 2)
        return y_mean, y_mean + jnp.expm1(variance) * y_mean**2


class StudentT(AbstractLikelihood):
    r"""Student-t with location $f$, degrees of freedom $\nu$ and scale $s$:

    $$\log p(y \mid f) = \log\frac{\Gamma(\frac{\nu+1}{2})}{\Gamma(\frac{\nu}{2})\sqrt{\nu\pi}\,s}
    \;-\; \frac{\nu+1}{2}\log\Big(1 + \frac{(y - f)^2}{\nu s^2}\Big).$$

    Not log-concave: $H > 0$ where $(y - f)^2 > \nu s^2$ (outliers), which is what the
    optimizers' safeguards and Gauss-Newton are for. Conditional moments
    $(f,\ s^2 \nu / (\nu - 2))$ for $\nu > 2$ (infinite variance, hence zero Gauss-Newton
    curvature, otherwise). Both parameters are stored by their logarithms.
    """

    log_df: Float[Array, ""]
    log_scale: Float[Array, ""]

    def __init__(
        self, df: ArrayLike = 4.0, scale: ArrayLike = 1.0, *, num_quadrature_points: int = 20
    ):
        check_positive(df, "df")
        check_positive(scale, "scale")
        self.log_df = jnp.log(jnp.asarray(df, dtype=float))
        self.log_scale = jnp.log(jnp.asarray(scale, dtype=float))
        self.num_quadrature_points = num_quadrature_points

    @property
    def df(self) -> Float[Array, ""]:
        return jnp.exp(self.log_df)

    @property
    def scale(self) -> Float[Array, ""]:
        return jnp.exp(self.log_scale)

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        df = self.df
        z2 = (y - f) ** 2 / (df * self.scale**2)
        normaliser = gammaln((df + 1) / 2) - gammaln(df / 2) - 0.5 * jnp.log(df * jnp.pi)
        return normaliser - self.log_scale - 0.5 * (df + 1) * jnp.log1p(z2)

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        f = jnp.asarray(f)
        df = self.df
        var = jnp.where(df > 2, self.scale**2 * df / jnp.where(df > 2, df - 2, 1.0), jnp.inf)
        return f, jnp.broadcast_to(var, f.shape)
