"""Families over whitened coordinates `v ~ N(0, I)`: the shared algebra.

A model maps `v` to its latent through a view (`model.whitened_view(batch)`; see
`ngvi.families.views`). A family over `v` needs only three things per latent function: its mean,
a root of its covariance applied to `A^T`, and `KL(q(v) || N(0, I))`; this base class turns
them into marginals, predictions and the posterior in the model's coordinates.
"""

import abc

import jax.numpy as jnp
from jaxtyping import Array, Float

from .base import AbstractVariational, Marginals
from .views import each_latent, over_latents


class AbstractWhitenedVariational(AbstractVariational):
    """A Gaussian over the whitened coordinates of a model, one per latent function."""

    @abc.abstractmethod
    def _mean(self) -> Float[Array, " D"]:
        """The mean of `v` (one latent function: no leading axis)."""

    @abc.abstractmethod
    def _root_t(self, design_t: Float[Array, "D B"]) -> Float[Array, "K B"]:
        """`R` with `R^T R = A Sigma A^T` for `design_t = A^T` (one latent function)."""

    @abc.abstractmethod
    def _kl(self) -> Float[Array, ""]:
        """`KL(q(v) || N(0, I))` (one latent function)."""

    def project(self, view) -> Marginals:
        """Marginals `(B, C)` of the latent described by `view`."""

        def one(view, q):
            return view.project(q._mean(), q._root_t(view.design.T))

        mean, variance = over_latents(one, view, self)
        return Marginals(view.to_points(mean), view.to_points(variance))

    def kl_to_prior(self) -> Float[Array, ""]:
        """`sum_c KL(q(v_c) || N(0, I))`, which equals the KL in the model's coordinates."""
        return jnp.sum(each_latent(lambda q: q._kl(), self))

    def marginals_and_kl(self, model, batch):
        return model.whitened_marginals(self, batch), self.kl_to_prior()

    def predict(self, model, X_new):
        return model.whitened_marginals_at(self, X_new)

    def posterior(self, model):
        """`(o + L m, L Sigma L^T)` for the model's coordinates `o + L v`
        (`model.latent_coordinates()`)."""

        def one(view, q):
            return view.project(q._mean(), q._root_t(view.design.T))

        return over_latents(one, model.latent_coordinates(), self)

    def coordinate_mean(self, marginals):
        return each_latent(lambda q: q._mean(), self)

    def target_from_pullback(self, grads, hessians, scale) -> tuple[Array, Array]:
        """The natural-gradient target from the data's statistics pulled back to `v`
        (`model.pullback`: `sum_b a_b E[g_b]` and `sum_b a_b E[H_b] a_b^T`, per latent); only
        the families held in natural parameters have one."""
        raise self._not_natural()

    def natural_target(self, model, batch, marginals, statistics, scale):
        pulled = model.pullback(batch, statistics, diagonal=self.diagonal_precision)
        return self.target_from_pullback(*pulled, scale)

    def statistics_and_target(self, model, batch, statistics_fn, scale, fuse: bool):
        """With `fuse`, the model computes marginals, statistics and their pullback in one
        pass over the rows (`model.pulled_back_statistics`): the kernel block of a chunk is
        built once per step instead of once for the marginals and again for the pullback."""
        if not fuse:
            return super().statistics_and_target(model, batch, statistics_fn, scale, fuse)
        log_prob, grads, hessians = model.pulled_back_statistics(
            self, batch, statistics_fn, self.diagonal_precision
        )
        return log_prob, self.kl_to_prior(), self.target_from_pullback(grads, hessians, scale), None
