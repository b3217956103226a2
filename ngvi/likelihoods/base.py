r"""The likelihood interface: a factorised $p(y \mid f) = \prod_i p(y_i \mid f_i)$.

Everything is about $\log p(y_i \mid f_i)$: its gradient $g = \partial_f \log p$ and Hessian
$H = \partial_f^2 \log p$ (negative for log-concave likelihoods). Expectations are under
independent marginals $f_i \sim \mathcal{N}(m_i, v_i)$ of the variational posterior.
"""

import abc
from typing import ClassVar

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._validation import check_finite
from ..quadrature import gauss_hermite_expectation

Vector = Float[Array, " n"]


class AbstractLikelihood(eqx.Module):
    r"""A factorised likelihood. Subclass it and write `log_prob`; the rest is derived.

    The expectations $\mathbb{E}_q[\log p]$, $\mathbb{E}_q[g]$ and $\mathbb{E}_q[H]$ default to
    Gauss-Hermite quadrature (with `num_quadrature_points` nodes) of `log_prob` and of its
    first and second derivatives by autodiff. Subclasses override them with closed forms
    where those exist. Parameters to be learned by `fit(..., learn=...)` are declared with
    `ngvi.learnable()`.

    `num_latent` is the number of latent functions per data point (1 here; a likelihood with
    several, e.g. a softmax, sees `f` of shape `(..., num_latent)` in `log_prob`).

    **Example:**

    ```python
    class Laplace(AbstractLikelihood):
        scale: float = 1.0

        def log_prob(self, f, y):
            return -jnp.abs(y - f) / self.scale - jnp.log(2 * self.scale)
    ```
    """

    num_quadrature_points: int = eqx.field(default=20, static=True, kw_only=True)
    differentiable: ClassVar[bool] = True
    """Whether `log_prob` has useful derivatives in `f` (Monte Carlo strategies need them)."""

    @property
    def num_latent(self) -> int:
        """Latent functions per data point."""
        return 1

    @property
    def per_point_parameters(self) -> tuple[str, ...]:
        """The fields that hold one value per data point (a Poisson exposure of shape `(n,)`).
        They line up with the targets only in a pass over all rows in order, so minibatches
        and the sparse model's chunked passes refuse a likelihood that has any."""
        return ()

    @abc.abstractmethod
    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        r"""Elementwise $\log p(y_i \mid f_i)$ for broadcastable arrays `f` and `y`."""

    def prepare_targets(self, y: ArrayLike) -> np.ndarray:
        """Validate the support of `y` on the host and return it in the internal encoding.

        Runs once, before compilation. Raises `ValueError` with a message naming the bad value.
        """
        return check_finite(y, "y")

    def derivatives(self, f: Array, y: ArrayLike) -> tuple[Array, Array, Array]:
        r"""$(\log p,\ g,\ H)$ elementwise at `f`, by autodiff of `log_prob`.

        Because `log_prob` is elementwise, $g$ is the gradient of $\sum_i \log p(y_i \mid f_i)$
        and the diagonal Hessian is its forward derivative along a tangent of ones.
        """

        def value_and_grad(f):
            log_p, vjp = jax.vjp(lambda f: self.log_prob(f, y), f)
            (grad,) = vjp(jnp.ones_like(log_p))
            return log_p, grad

        (log_p, grad), (_, hess) = jax.jvp(value_and_grad, (f,), (jnp.ones_like(f),))
        return log_p, grad, hess

    def expected_log_prob(self, y: Vector, mean: Vector, variance: Vector) -> Vector:
        r"""$\mathbb{E}_{\mathcal{N}(f_i \mid m_i, v_i)}[\log p(y_i \mid f_i)]$, shape `(n,)`."""
        return gauss_hermite_expectation(
            lambda f: self.log_prob(f, y), mean, variance, self.num_quadrature_points
        )

    def quadrature_error(self, y: Vector, mean: Vector, variance: Vector) -> Vector:
        r"""An estimate of the error of `expected_log_prob` per point: how much its Gauss-Hermite
        value moves when the nodes are doubled (0 where a subclass replaced the quadrature by
        its own rule). A fixed rule is exact for smooth integrands at moderate variance and
        misses a feature of unit width once $\sqrt{v}$ is several times wider (the probit's
        $\mathbb{E}_q[\log\Phi]$: 4e-3 at $\sqrt v = 5$ with 20 nodes)."""
        if type(self).expected_log_prob is not AbstractLikelihood.expected_log_prob:
            return jnp.zeros_like(jnp.asarray(mean))
        doubled = gauss_hermite_expectation(
            lambda f: self.log_prob(f, y), mean, variance, 2 * self.num_quadrature_points
        )
        return jnp.abs(self.expected_log_prob(y, mean, variance) - doubled)

    def expected_derivatives(
        self, y: Vector, mean: Vector, variance: Vector
    ) -> tuple[Vector, Vector, Vector]:
        r"""$(\mathbb{E}_q[\log p],\ \mathbb{E}_q[g],\ \mathbb{E}_q[H])$, each of shape `(n,)`.

        All three come from one quadrature pass of `derivatives`. By Bonnet's and Price's
        theorems, $\partial_m \mathbb{E}_q[\log p] = \mathbb{E}_q[g]$ and
        $\partial_v \mathbb{E}_q[\log p] = \tfrac12 \mathbb{E}_q[H]$.
        """
        return gauss_hermite_expectation(
            lambda f: self.derivatives(f, y), mean, variance, self.num_quadrature_points
        )

    @property
    def statistics_are_derivatives(self) -> bool:
        """Whether `expected_derivatives`' gradient and curvature are the derivatives of its
        expected log-likelihood (Bonnet and Price), so that a natural step's fixed point is the
        maximiser of the ELBO it reports. Monte Carlo statistics (`AbstractMultiLatentLikelihood`
        without a closed form) differ from them by the sampling error."""
        return True

    @property
    def has_conditional_moments(self) -> bool:
        """Whether the subclass defines `conditional_moments` (needed by `GaussNewton` and by
        the predictive moments of `y`)."""
        return type(self).conditional_moments is not AbstractLikelihood.conditional_moments

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        r"""The conditional mean and variance $(\mu(f), \sigma^2(f))$ of $y$ given $f$.

        Optional: a likelihood without it fits with every strategy but `GaussNewton`, and
        `predict` then returns the latent marginals only.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not define `conditional_moments`, which Gauss-Newton "
            "curvature and predictive moments of y need."
        )

    def gauss_newton_hessian(self, f: ArrayLike) -> Array:
        r"""The pointwise statistical-linearisation curvature $-\mu'(f)^2 / \sigma^2(f) \le 0$.

        Computed from `conditional_moments` (the derivative by autodiff); entries where
        $\sigma^2(f) = 0$ or is infinite give 0. Subclasses override it with a stable form.
        """
        f = jnp.asarray(f)
        (mean, var), (dmean, _) = jax.jvp(self.conditional_moments, (f,), (jnp.ones_like(f),))
        usable = (var > 0) & jnp.isfinite(var)
        return -jnp.where(usable, dmean**2 / jnp.where(usable, var, 1.0), 0.0)

    def gauss_newton_derivatives(
        self, y: Vector, mean: Vector, variance: Vector
    ) -> tuple[Vector, Vector, Vector]:
        r"""$(\mathbb{E}_q[\log p],\ \mathbb{E}_q[g],\ \mathbb{E}_q[H_{GN}])$ with

        $$H_{GN}(f) = -\frac{\mu'(f)^2}{\sigma^2(f)} \le 0,$$

        the Gauss-Newton (generalised / Fisher) curvature of the conditional mean
        $\mu(f) = \mathbb{E}[y \mid f]$ and variance $\sigma^2(f) = \mathrm{Var}[y \mid f]$.
        It equals the expected Hessian $\mathbb{E}_{y \mid f}[H]$ for exponential families in
        their canonical link, and is never positive, so the resulting precision stays PD even
        for non-log-concave likelihoods.
        """

        def integrand(f):
            log_p, grad, _ = self.derivatives(f, y)
            return log_p, grad, self.gauss_newton_hessian(f)

        return gauss_hermite_expectation(integrand, mean, variance, self.num_quadrature_points)

    def predictive_error(self, mean: Array, variance: Array) -> Float[Array, " n"]:
        """How far `predictive_moments`' mean may be off per point (largest over the latents;
        0 here: closed forms, quadrature of smooth integrands, or Monte Carlo). A rule that can
        miss says so (`RobustMax`); `ngvi.predict` warns when it exceeds `1e-3`."""
        return jnp.zeros(jnp.shape(mean)[0], jnp.asarray(mean).dtype)

    def accuracy_advice(self, error: float) -> str:
        """What `ngvi.predict`'s warning says when `predictive_error` exceeds `1e-3`."""
        return (
            f"{type(self).__name__}'s predictive probabilities may be off by up to {error:.2g}: "
            "raise the likelihood's `num_quadrature_points`."
        )

    def predictive_moments(self, mean: Vector, variance: Vector) -> tuple[Vector, Vector]:
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
