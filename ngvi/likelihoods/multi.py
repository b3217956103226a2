r"""Likelihoods with several latent functions per data point: $f_i \in \mathbb{R}^C$.

A subclass writes `log_prob(f, y)` with `f` of shape `(..., C)` and sets `num_latent`; the
posterior is independent across the latent functions (mean field across latents), so the
natural-gradient step needs, per point, $\mathbb{E}_q[\log p]$, $\mathbb{E}_q[g]$ and the
diagonal blocks $\mathbb{E}_q[\partial^2 \log p / \partial f_c^2]$ under
$f_{ic} \sim \mathcal{N}(m_{ic}, v_{ic})$ independent:

- where the subclass gives $\mathbb{E}_q[\log p]$ in closed form or by quadrature
  (`expected_log_prob`), the other two follow exactly by autodiff (Bonnet and Price:
  $\partial_m \mathbb{E}[\log p] = \mathbb{E}[g]$, $2\,\partial_v \mathbb{E}[\log p] =
  \mathbb{E}[H_{cc}]$);
- otherwise all three are Monte Carlo averages over `num_mc_samples` draws with **common random
  numbers**: the draws come from the fixed key `mc_seed`, so the ELBO is a smooth,
  deterministic function of $q$ and a natural-gradient step is deterministic for a given key.
  `expected_log_prob_error` is the standard error of that estimate.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .base import AbstractLikelihood

Matrix = Float[Array, "n C"]


class AbstractMultiLatentLikelihood(AbstractLikelihood):
    """A likelihood of `num_latent` latent functions per point (see the module docstring).

    `predictive_moments(mean, variance)` gets variances `(n, C)`, or from the coupled family
    covariances `(n, C, C)` per point: a closed form must accept both."""

    num_mc_samples: int = eqx.field(default=256, static=True, kw_only=True)
    mc_seed: int = eqx.field(default=0, static=True, kw_only=True)

    def __check_init__(self):
        count = self.num_mc_samples
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ValueError(
                f"`num_mc_samples` must be an integer >= 2 (the ELBO's standard error needs two "
                f"draws), got {count!r}."
            )

    @property
    @abc.abstractmethod
    def num_latent(self) -> int:
        """Latent functions per data point."""

    def _has_closed_form(self) -> bool:
        return type(self).expected_log_prob is not AbstractMultiLatentLikelihood.expected_log_prob

    @property
    def statistics_are_derivatives(self) -> bool:
        # Price's Monte Carlo curvature is not 2 d/dv of the Monte Carlo E[log p] at the same
        # draws (Softmax(3): -0.167 against -0.152 at one point with 256 draws).
        return self._has_closed_form()

    def _samples(self, mean: Matrix, variance: Matrix) -> Float[Array, "S n C"]:
        """`num_mc_samples` draws per row, from `mc_seed`, drawn row-major (`row_major_normal`)
        so that a row's draws do not depend on how many rows follow it."""
        noise = row_major_normal(self.mc_seed, self.num_mc_samples, mean.shape, mean.dtype)
        return mean[None] + jnp.sqrt(jnp.maximum(variance, 0.0))[None] * noise

    def quadrature_error(self, y, mean: Matrix, variance: Matrix) -> Float[Array, " n"]:
        """0 per point: a closed form, or Monte Carlo, whose error is `expected_log_prob_error`.
        A subclass with a quadrature rule says how far it may be off (`RobustMax`)."""
        return jnp.zeros(mean.shape[0], mean.dtype)

    def derivatives(self, f: Matrix, y: ArrayLike) -> tuple[Array, Matrix, Matrix]:
        """`log p`, its gradient and the diagonal of its Hessian in `f`, per point."""

        def point(f_i, y_i):
            log_p = lambda f: self.log_prob(f, y_i)  # noqa: E731
            hessian = jax.hessian(log_p)(f_i)
            return log_p(f_i), jax.grad(log_p)(f_i), jnp.diagonal(hessian)

        return jax.vmap(point)(f, jnp.asarray(y))

    def full_derivatives(self, f: Matrix, y: ArrayLike) -> tuple[Array, Matrix, Array]:
        """`log p`, its gradient and its full `C x C` Hessian in `f`, per point (for the
        coupled family, `Model(..., family="coupled")`); a subclass may give a closed form."""

        def point(f_i, y_i):
            log_p = lambda f: self.log_prob(f, y_i)  # noqa: E731
            return log_p(f_i), jax.grad(log_p)(f_i), jax.hessian(log_p)(f_i)

        return jax.vmap(point)(f, jnp.asarray(y))

    def expected_log_prob(self, y, mean: Matrix, variance: Matrix) -> Float[Array, " n"]:
        """Monte Carlo (common random numbers) unless a subclass gives a closed form."""
        return jnp.mean(jax.vmap(lambda f: self.log_prob(f, y))(self._samples(mean, variance)), 0)

    def expected_log_prob_error(self, y, mean: Matrix, variance: Matrix) -> Float[Array, " n"]:
        """The standard error of `expected_log_prob` per point (0 for a closed form)."""
        if self._has_closed_form():
            return jnp.zeros(mean.shape[0], mean.dtype)
        values = jax.vmap(lambda f: self.log_prob(f, y))(self._samples(mean, variance))
        return jnp.std(values, axis=0) / jnp.sqrt(self.num_mc_samples)

    def expected_derivatives(self, y, mean: Matrix, variance: Matrix):
        """`(E[log p] (n,), E[g] (n, C), E[H_cc] (n, C))` (see the module docstring)."""
        if self._has_closed_form():

            def total(m, v):
                values = self.expected_log_prob(y, m, v)
                return jnp.sum(values), values

            (grad_m, grad_v), values = jax.grad(total, argnums=(0, 1), has_aux=True)(mean, variance)
            return values, grad_m, 2.0 * grad_v
        samples = self._samples(mean, variance)
        log_p, grad, hess = jax.vmap(lambda f: self.derivatives(f, y))(samples)
        return jnp.mean(log_p, 0), jnp.mean(grad, 0), jnp.mean(hess, 0)

    def gauss_newton_derivatives(self, y, mean, variance):
        raise TypeError(
            f"GaussNewton has no curvature for {type(self).__name__} (several latents); use "
            "NaturalGradient or BLR."
        )


def row_major_normal(seed: int, count: int, shape: tuple[int, ...], dtype) -> Array:
    """Standard normal draws `(count,) + shape` for `shape = (n, ...)`, generated as
    `(n, count, ...)` and moved: under JAX's partitionable threefry (the default) an entry
    depends only on its place in the generated array, so row `i`'s draws are the same for any
    `n`. (Drawn `(count, n, ...)`, they changed with `n`: the weight-0 rows the scikit-learn
    estimators append changed every real point's draws, and the Monte Carlo fit with them.)"""
    key = jax.random.PRNGKey(seed)
    noise = jax.random.normal(key, (shape[0], count) + tuple(shape[1:]), dtype)
    return jnp.moveaxis(noise, 1, 0)
