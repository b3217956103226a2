"""The model protocol: what strategies, `fit` and `predict` may ask of a model.

A model owns its prior, its likelihood, its data and the family it uses, and answers for a batch
of data (`None`: all of it):

- `latent_marginals_and_kl(q, batch)`: the marginals of the latent(s) at the batch, `(B, C)`,
  and `KL(q || p)`;
- `natural_target(q, batch, marginals, statistics, scale)`: the natural-gradient target from
  per-point site statistics, the data term scaled by `scale = N / B`;
- `predict_latent(q, X_new)`, `posterior(q)`, `elbo(q, batch)`.

It does so by handing the family a view of its prior (`whitened_view`, `site_view`); families
hold only their own parameters. Adding a model means implementing the views (and
`init_variational`); strategies and `predict` never look at the model's class.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._data import Data, weighted
from ..families import (
    AbstractVariational,
    DenseGaussianVariational,
    DiagonalGaussianVariational,
    JointView,
    Marginals,
    SiteStatistics,
    WhitenedGaussianVariational,
)
from ..families.views import over_latents
from ..likelihoods import AbstractLikelihood
from ..likelihoods.expectations import (
    expected_log_prob,
    expected_log_prob_error,
    quadrature_error,
)

FAMILIES = ("full", "mean-field")
FORMS = ("natural", "moments")


def check_family(family: str, allowed: tuple[str, ...] = FAMILIES) -> str:
    if family not in allowed:
        raise ValueError(f"`family` must be one of {allowed}, got {family!r}.")
    return family


def check_no_per_point_parameters(likelihood, where: str) -> None:
    """Refuse a likelihood with one parameter value per data point (`per_point_parameters`)
    where the rows are taken in chunks or batches, which would not line up with them."""
    fields = likelihood.per_point_parameters
    if fields:
        name = f"{type(likelihood).__name__}.{fields[0]}"
        raise ValueError(
            f"`{name}` holds one value per data point, which {where} cannot keep in line with "
            "the rows it takes in chunks or batches: fit the dense `ngvi.Model` with full "
            "batches, or give a scalar."
        )


def check_latents(prior, likelihood) -> None:
    """Raise if a prior made for a number of latent functions does not match the likelihood."""
    count = getattr(prior, "num_latent", None)
    if count is not None and count != likelihood.num_latent:
        raise ValueError(
            f"The prior is for {count} latent functions but the likelihood has "
            f"{likelihood.num_latent}."
        )


@eqx.filter_jit
def prior_factor_is_finite(model) -> Array:
    """Whether the Cholesky factor of the model's prior coordinates (`latent_coordinates`) is
    finite: one compiled call for `diagnose`, not a dozen eager operations that each compile on
    first use (a fresh process's first fit paid ~0.3 s)."""
    return jnp.all(jnp.isfinite(model.latent_coordinates().design))


class AbstractModel(eqx.Module):
    """The model protocol (see the module docstring)."""

    likelihood: eqx.AbstractVar[AbstractLikelihood]
    data: eqx.AbstractVar[Data]
    family: eqx.AbstractVar[str]

    supports_minibatch: ClassVar[bool] = True
    """Whether `batch` may be a subset of the data (scaled by `N / B`)."""

    # -- the views a family reads the prior through ----------------------------------------
    @abc.abstractmethod
    def whitened_view(self, batch: Data | None):
        """The latent at `batch` (`None`: all data) in whitened coordinates."""

    @abc.abstractmethod
    def whitened_view_at(self, X_new: Float[Array, "m d"]):
        """The latent at new inputs in whitened coordinates."""

    @abc.abstractmethod
    def latent_coordinates(self) -> JointView:
        """The model's natural coordinates as `o + L v` (a `JointView`; see `posterior`)."""

    @abc.abstractmethod
    def num_coordinates(self) -> int:
        """The dimension of the whitened coordinates (per latent function)."""

    def whitened_marginals(self, q, batch: Data | None) -> Marginals:
        """Marginals `(B, C)` at `batch` of a family over the whitened coordinates (a model
        that streams over its data in chunks overrides this)."""
        return q.project(self.whitened_view(batch))

    def whitened_marginals_at(self, q, X_new) -> Marginals:
        """As `whitened_marginals`, at new inputs."""
        return q.project(self.whitened_view_at(X_new))

    def pullback(
        self, batch: Data | None, statistics: SiteStatistics, diagonal: bool
    ) -> tuple[Array, Array]:
        """Per-point `E[g]`, `E[H]` pulled back to the whitened coordinates, per latent:
        `(sum_b a_b E[g_b], sum_b a_b E[H_b] a_b^T)` (`(C, D)`, and `(C, D, D)` or its
        diagonal `(C, D)`), unscaled."""
        view = self.whitened_view(batch)
        grads, hessians = view.from_points(statistics.grad), view.from_points(statistics.hess)
        return over_latents(lambda v, g, h: v.pullback(g, h, diagonal), view, grads, hessians)

    def pulled_back_statistics(self, q, batch: Data | None, statistics_fn, diagonal: bool):
        """`(sum_b w_b E[log p_b], grads, hessians)`: the strategy's per-point statistics
        (`statistics_fn(y, marginals)`) at the marginals of `q` over whitened coordinates,
        weighted, and pulled back as in `pullback`. Here the three stages run in turn; a model
        that streams over its rows fuses them into one pass (`SparseModel`)."""
        marginals = self.whitened_marginals(q, batch)
        statistics = self.weighted_statistics(batch, statistics_fn(self.targets(batch), marginals))
        grads, hessians = self.pullback(batch, statistics, diagonal)
        return jnp.sum(statistics.log_prob), grads, hessians

    def site_view(self, batch: Data | None):
        raise TypeError(
            f"{type(self).__name__} has no per-point sites; use `model.init_variational()`."
        )

    def site_prediction_view(self, X_new):
        return self.site_view(None)

    # -- what strategies, fit and predict ask ----------------------------------------------
    @property
    def num_data(self) -> int:
        return self.data.y.shape[0]

    @property
    def row_shards(self) -> int:
        """How many devices the data rows are split over (a batch size must be a multiple)."""
        return 1

    def batch(self, indices: Int[Array, " B"]) -> Data:
        """The rows `indices` of the data, as a batch."""
        return self.data[indices]

    @property
    def num_latent(self) -> int:
        return self.likelihood.num_latent

    @property
    def num_groups(self) -> int:
        """How many independent Gaussians `q` holds (its leading axis): one per latent
        function here; one for a model whose single latent vector is jointly Gaussian."""
        return self.num_latent

    @property
    def X(self) -> Float[Array, "n d"]:
        return self.data.X

    @property
    def num_inputs(self) -> int:
        """The number of input columns `d` that `predict` expects (0 for a parametric model)."""
        return self.data.X.shape[1]

    @property
    def y(self) -> Float[Array, " n"]:
        return self.data.y

    @property
    def dtype(self):
        return self.data.y.dtype

    def init_variational(self, form: str = "natural") -> AbstractVariational:
        """The model's family at the prior. `form="natural"` (default) is what the
        natural-gradient strategies move: sites for a dense GP's full family, natural
        parameters over the whitened coordinates otherwise; `form="moments"` is the
        `(m, S)` form of the same family that `Adam` moves."""
        if form not in FORMS:
            raise ValueError(f"`form` must be one of {FORMS}, got {form!r}.")
        shape = (self.num_groups, self.num_coordinates(), self.dtype)
        if form == "moments":
            return WhitenedGaussianVariational.at_prior(*shape, self.family == "mean-field")
        if self.family == "mean-field":
            return DiagonalGaussianVariational.at_prior(*shape)
        return self._full_natural_family(*shape)

    def _full_natural_family(self, num_latent, dim, dtype) -> AbstractVariational:
        return DenseGaussianVariational.at_prior(num_latent, dim, dtype)

    def targets(self, batch: Data | None) -> Array:
        return (self.data if batch is None else batch).y

    def point_weights(self, batch: Data | None) -> Array | None:
        """The data term's per-point weights at `batch` (`None`: every point weighs 1)."""
        return (self.data if batch is None else batch).weight

    def weighted_statistics(self, batch: Data | None, statistics: SiteStatistics):
        """Per-point statistics times the points' weights (a point of weight 0 adds nothing
        to the ELBO and gets no site)."""
        weight = self.point_weights(batch)
        if weight is None:
            return statistics
        return SiteStatistics(*(weighted(weight, part) for part in statistics))

    def batch_scale(self, batch: Data | None):
        """`N / B`: the factor that makes a batch's data term an unbiased full-data estimate."""
        return 1.0 if batch is None else self.num_data / batch.num_points

    def latent_marginals_and_kl(
        self, q: AbstractVariational, batch: Data | None = None
    ) -> tuple[Marginals, Float[Array, ""]]:
        """Marginals `(B, C)` of the latent at `batch` and `KL(q || p)`."""
        return q.marginals_and_kl(self, batch)

    def natural_target(
        self, q, batch, marginals: Marginals, statistics: SiteStatistics, scale
    ) -> tuple[Array, Array]:
        """`q`'s parameters at `eta_prior + scale * site(statistics)`."""
        return q.natural_target(self, batch, marginals, statistics, scale)

    def statistics_and_target(self, q, batch, statistics_fn, scale, fuse: bool):
        """A natural step's data work, `(sum_b w_b E[log p_b], KL, target, marginals)`
        (`marginals` may be `None` when `fuse`): see
        `AbstractVariational.statistics_and_target`."""
        return q.statistics_and_target(self, batch, statistics_fn, scale, fuse)

    def expected_log_likelihood(self, y, marginals: Marginals) -> Float[Array, " B"]:
        """`E_q[log p(y_b | f_b)]` per point: closed form or quadrature, never sampled."""
        return expected_log_prob(self.likelihood, y, marginals)

    def elbo_error(self, q: AbstractVariational, batch: Data | None = None) -> Float[Array, ""]:
        """The standard error of `elbo(q, batch)` from Monte Carlo expectations (0 when every
        expectation is exact): `scale * sqrt(sum_b se_b^2)` over the points' independent
        estimates."""
        return self.elbo_report(q, batch)[1]

    def quadrature_error(self, q: AbstractVariational) -> Float[Array, ""]:
        """How far the ELBO's quadrature may be from the exact expectations: the sum over all
        points of `AbstractLikelihood.quadrature_error` (0 for closed forms)."""
        return self.elbo_report(q, None, quadrature=True)[2]

    def elbo_report(self, q, batch: Data | None = None, quadrature: bool = False):
        """`(elbo, elbo_error, quadrature_error)` from one computation of the marginals (what
        `fit` reports before and after its loop); the quadrature error is 0 unless asked
        for."""
        marginals, kl = self.latent_marginals_and_kl(q, batch)
        y, weight, scale = self.targets(batch), self.point_weights(batch), self.batch_scale(batch)
        per_point = weighted(weight, expected_log_prob_error(self.likelihood, y, marginals))
        report = [self.elbo_from_marginals(marginals, kl, batch)]
        report.append(scale * jnp.sqrt(jnp.sum(per_point**2)))
        if not quadrature:
            return (*report, jnp.zeros((), report[0].dtype))
        errors = weighted(weight, quadrature_error(self.likelihood, y, marginals))
        return (*report, jnp.sum(errors))

    @eqx.filter_jit
    def elbo(self, q: AbstractVariational, batch: Data | None = None) -> Float[Array, ""]:
        """`sum_i w_i E_q[log p(y_i | f_i)] - KL(q || p)` (`w_i = 1` unless the data carry
        weights), exact (closed form or quadrature);
        on a batch, the unbiased estimate with the data term scaled by `N / B`.

        Compiled (inlined where it is called inside a compiled function): run eagerly, a
        first call on a dense probit GP of 200 points compiled each operation on its own and
        took 6.4 s, against 1.1 s compiled as one program (and 57 ms against 4 ms after)."""
        return self.elbo_from_marginals(*self.latent_marginals_and_kl(q, batch), batch)

    def elbo_from_marginals(self, marginals: Marginals, kl, batch: Data | None = None):
        """The ELBO from `latent_marginals_and_kl(q, batch)` (for callers that need the KL)."""
        expected = self.expected_log_likelihood(self.targets(batch), marginals)
        return self.batch_scale(batch) * jnp.sum(weighted(self.point_weights(batch), expected)) - kl

    @eqx.filter_jit  # compiled as one program, as `elbo`
    def predict_latent(self, q: AbstractVariational, X_new) -> Marginals:
        """Latent marginals `(m, C)` at new inputs."""
        return q.predict(self, X_new)

    @eqx.filter_jit  # compiled as one program, as `elbo`
    def posterior(self, q: AbstractVariational) -> tuple[Array, Array]:
        """`q` as moments in the model's coordinates: mean `(C, D)`, covariance `(C, D, D)`."""
        return q.posterior(self)

    def diagnose(self, q: AbstractVariational) -> str:
        """A sentence on why the ELBO of `q` may not be finite ('' if nothing is found)."""
        return ""
