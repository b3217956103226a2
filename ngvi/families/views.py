"""Views: how a model's latent at a batch of points depends on whitened coordinates.

A model hands a family a *view* of its prior for a batch of data points; the family combines it
with its own parameters. Two views cover every model so far:

- [`RowsView`][ngvi.families.views.RowsView]: one scalar latent per point and latent function,
  `f_b = o_b + a_b^T v + e_b`, `v ~ N(0, I)` the whitened coordinates, `e_b ~ N(0, c_b)` a
  conditional part independent of `v` (zero for exact models, `k(x, x) - q(x, x)` for inducing
  points). Dense GPs (`a_b` the rows of `chol(K)`), linear models (`a_b = L_0^T x_b`) and sparse
  GPs (`a_b = L_u^-1 k_u(x_b)`) give this view.
- [`JointView`][ngvi.families.views.JointView]: one point whose latent is a whole vector,
  `f = o + A v` (a parametric model: `f = w = m_0 + L_0 v`).

Each view maps a family's moments to latent marginals and pulls per-point derivatives back to
`v`. Families store a leading latent axis (one Gaussian per latent function); views are
per-latent, and `to_points` arranges per-latent results in the protocol's `(B, C)` layout.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def each_latent(fn, *trees):
    """`fn` on each latent function's slice of `trees` (a leading latent axis), stacked.

    Several latents run one after another (`lax.map`), not batched (`vmap`): jaxlib's CPU
    runtime (0.10) can hang for good, every worker idle, on batched Cholesky factors and
    triangular solves of a few hundred rows and more (a ten-class dense GP on 1,257 points
    hung in three runs out of three; see `ngvi/_xla.py`). Each latent's work is a full
    factorisation, so little is lost by not batching.
    """
    arrays, static = eqx.partition(trees, eqx.is_array)
    count = jax.tree_util.tree_leaves(arrays)[0].shape[0]
    if count == 1:
        return eqx.filter_vmap(fn)(*trees)
    return jax.lax.map(lambda chunk: fn(*eqx.combine(chunk, static)), arrays)


def over_latents(fn, view, *per_latent):
    """`fn(view_c, *args_c)` for every latent function `c`, stacked (`each_latent`): the
    arguments carry a leading latent axis; a view does too when `view.per_latent` (one prior
    per latent function), and is shared by all latents otherwise."""
    if view.per_latent:
        return each_latent(fn, view, *per_latent)
    return each_latent(lambda *args: fn(view, *args), *per_latent)


class RowsView(eqx.Module):
    """`f_b = offset_b + design_b @ v + e_b`, `e_b ~ N(0, conditional_variance_b)`.

    With `per_latent`, every field has a leading latent axis (one prior per latent function).
    """

    offset: Float[Array, " B"]
    design: Float[Array, "B D"]
    conditional_variance: Float[Array, " B"]
    per_latent: bool = eqx.field(static=True, default=False)

    def project(
        self, mean: Float[Array, " D"], root_t: Float[Array, "K B"]
    ) -> tuple[Float[Array, " B"], Float[Array, " B"]]:
        """Marginals of `f_b` when `v ~ N(mean, Sigma)` and the columns `r_b` of `root_t`
        satisfy `r_b^T r_b = a_b^T Sigma a_b`: `(o_b + a_b^T mean, c_b + ||r_b||^2)`."""
        variance = self.conditional_variance + jnp.sum(root_t**2, axis=0)
        return self.offset + self.design @ mean, variance

    def pullback(
        self, grad: Float[Array, " B"], hess: Float[Array, " B"], diagonal: bool
    ) -> tuple[Float[Array, " D"], Array]:
        """Chain rule to `v`: `(A^T g, A^T diag(h) A)` (only its diagonal when `diagonal`)."""
        grad_v = self.design.T @ grad
        if diagonal:
            return grad_v, (self.design**2).T @ hess
        return grad_v, self.design.T @ (hess[:, None] * self.design)

    @staticmethod
    def to_points(per_latent: Float[Array, "C B"]) -> Float[Array, "B C"]:
        """`(C, B)` per-latent results as the protocol's `(B, C)`."""
        return per_latent.T

    @staticmethod
    def from_points(per_point: Float[Array, "B C ..."]) -> Float[Array, "C B ..."]:
        """The inverse of `to_points`."""
        return jnp.moveaxis(per_point, 1, 0)


class JointView(eqx.Module):
    """One data point whose latent is the vector `f = offset + design @ v` (`K` entries);
    also how a model maps whitened coordinates to its natural ones (`latent_coordinates`)."""

    offset: Float[Array, " K"]
    design: Float[Array, "K D"]
    per_latent: bool = eqx.field(static=True, default=False)

    def project(
        self, mean: Float[Array, " D"], root_t: Float[Array, "J K"]
    ) -> tuple[Float[Array, " K"], Float[Array, "K K"]]:
        """Mean and full covariance `R^T R` of `f`."""
        covariance = root_t.T @ root_t
        return self.offset + self.design @ mean, 0.5 * (covariance + covariance.T)

    def pullback(
        self, grad: Float[Array, " K"], hess: Float[Array, "K K"], diagonal: bool
    ) -> tuple[Float[Array, " D"], Array]:
        """`(A^T g, A^T H A)` (only its diagonal when `diagonal`)."""
        grad_v = self.design.T @ grad
        if diagonal:
            return grad_v, jnp.einsum("kd,kl,ld->d", self.design, hess, self.design)
        return grad_v, self.design.T @ hess @ self.design

    @staticmethod
    def to_points(per_latent: Array) -> Array:
        """One latent group `(1, K, ...)` is one point with `K` latents: the same array."""
        return per_latent

    @staticmethod
    def from_points(per_point: Array) -> Array:
        return per_point
