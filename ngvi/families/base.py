"""The variational-family interface and the protocol's data types.

A family is a Gaussian over a model's latent coordinates that holds **only its own
parameters**, with a leading latent axis (one Gaussian per latent function). The model supplies
the prior through a view (`model.whitened_view(batch)`, `model.site_view(batch)`), so the same
parameters read under new hyperparameters give the posterior of the new model.
"""

import abc
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


class Marginals(NamedTuple):
    """Latent marginals at a batch of `B` points with `C` latents each.

    `variance` is `(B, C)` (independent latents) or `(B, C, C)` (a full covariance per point).
    """

    mean: Float[Array, "B C"]
    variance: Array


class SiteStatistics(NamedTuple):
    """What a curvature estimator reports per data point, at the marginals of `q`:
    `E_q[log p(y_b | f_b)]` `(B,)`, `E_q[g]` `(B, C)` and `E_q[H]` (`(B, C)` diagonal blocks or
    `(B, C, C)`), all of the log-likelihood."""

    log_prob: Float[Array, " B"]
    grad: Float[Array, "B C"]
    hess: Array


class AbstractVariational(eqx.Module):
    """A Gaussian variational family in the coordinates of a model (see the module docstring).

    `parameters` are what a strategy moves: natural parameters (or sites) for the natural
    families, `(m, S)` for the moment family that `Adam` moves.
    """

    diagonal_precision: ClassVar[bool]
    """Whether the precision in `parameters` is stored elementwise (sites, mean field) rather
    than as matrices."""

    @property
    @abc.abstractmethod
    def parameters(self) -> tuple[Array, Array]:
        """The arrays a strategy moves (each with a leading latent axis)."""

    @abc.abstractmethod
    def with_parameters(self, parameters: tuple[Array, Array]) -> "AbstractVariational":
        """The same family with new parameters."""

    @abc.abstractmethod
    def marginals_and_kl(self, model, batch) -> tuple[Marginals, Float[Array, ""]]:
        """Latent marginals at `batch` (`None`: all the model's data) and `KL(q || p)`."""

    @abc.abstractmethod
    def predict(self, model, X_new) -> Marginals:
        """Latent marginals at new inputs."""

    @abc.abstractmethod
    def posterior(self, model) -> tuple[Array, Array]:
        """Mean `(C, D)` and covariance `(C, D, D)` in the model's latent coordinates (`f(X)`
        for a dense GP, the weights for a linear model, `u = f(Z)` for a sparse GP)."""

    def natural_target(
        self, model, batch, marginals: Marginals, statistics: SiteStatistics, scale
    ) -> tuple[Array, Array]:
        """The natural-gradient target: `parameters` of the member `eta_prior + site`, the site
        built from `statistics` with the data term scaled by `scale = N / B`."""
        raise self._not_natural()

    def _not_natural(self) -> TypeError:
        return TypeError(
            f"{type(self).__name__} is not held in natural parameters, so natural-gradient "
            "strategies cannot move it; start from `model.init_variational()`."
        )

    def statistics_and_target(self, model, batch, statistics_fn, scale, fuse: bool):
        """One natural step's data work: `(sum_b w_b E[log p_b], KL, target, marginals)`.

        `statistics_fn(y, marginals) -> SiteStatistics` is the strategy's curvature
        estimator. This default runs the protocol's three stages in turn (marginals, per-point
        statistics, `model.natural_target`); a family over whitened coordinates may let the
        model fuse them into one pass over the rows (`fuse=True`, for statistics that do not
        draw random numbers), and then returns `marginals=None`."""
        marginals, kl = model.latent_marginals_and_kl(self, batch)
        statistics = statistics_fn(model.targets(batch), marginals)
        statistics = model.weighted_statistics(batch, statistics)
        target = model.natural_target(self, batch, marginals, statistics, scale)
        return jnp.sum(statistics.log_prob), kl, target, marginals

    def coordinate_mean(self, marginals: Marginals) -> Float[Array, "C D"]:
        """The mean of the coordinates the stored precision acts on (used by the safeguards
        when they change the precision)."""
        raise NotImplementedError

    @property
    def precision(self) -> Array:
        """`-2 * parameters[1]`: site precisions, a diagonal, or precision matrices."""
        return -2.0 * self.parameters[1]

    @abc.abstractmethod
    def precision_is_valid(self) -> Bool[Array, ""]:
        """Whether the parameters are finite and describe a proper Gaussian."""

    def min_precision(self) -> Float[Array, ""]:
        """The smallest stored precision (diagonal entry)."""
        precision = self.precision
        if not self.diagonal_precision:
            precision = jnp.diagonal(precision, axis1=-2, axis2=-1)
        return jnp.min(precision)

    def prepared_for_psd_correction(self, model) -> "AbstractVariational":
        """A starting point whose precision is strictly positive (default: unchanged)."""
        return self
