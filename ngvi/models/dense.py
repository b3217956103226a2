"""`Model`: a prior, a likelihood and data, with the latent exact at every data point."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._data import Data, as_inputs, prepare_data
from ..families import CoupledSiteGaussianVariational, SiteGaussianVariational
from ..likelihoods import AbstractLikelihood
from ..priors import AbstractPrior, GaussianPrior
from .base import FAMILIES, AbstractModel, check_family, check_latents, prior_factor_is_finite


def _check_coupled(prior, likelihood) -> None:
    if not prior.has_sites:
        raise ValueError("family='coupled' is for GP priors (one C x C site per data point).")
    if likelihood.num_latent < 2:
        raise ValueError(
            "family='coupled' couples several latent functions; this likelihood has one: "
            "use family='full'."
        )
    if not likelihood.differentiable:
        raise ValueError(
            f"{type(likelihood).__name__} is piecewise constant in f, so the coupled family's "
            "Monte Carlo derivatives would be zero; use family='full' (exact expectations)."
        )


class Model(AbstractModel):
    """A prior over a latent function, a factorised likelihood and data:

    - with a `GPPrior`, `f ~ GP(m0, k)` and the latent is `f(X)` at the `N` training inputs
      (a dense GP: `O(N^3)` per step; `ngvi.SparseModel` for large `N`);
    - with a `GaussianPrior` over `D` weights, `f = X w` (Bayesian linear, logistic or
      Poisson regression on the design matrix `X`).

    **Arguments:**

    - `prior`: a `GPPrior` or a `GaussianPrior`.
    - `likelihood`: any `AbstractLikelihood`; its `prepare_targets` checks `y`'s support.
    - `X`: inputs `(n,)` or `(n, d)`; for a `GaussianPrior`, the `(n, D)` design matrix.
    - `y`: targets `(n,)`.
    - `family`: `"full"` (default: a full-covariance Gaussian; for a GP, held as the prior
      plus one site per data point and latent function, the latents independent),
      `"mean-field"` (independent whitened coordinates), or, for a GP with several latent
      functions, `"coupled"` (one `C x C` site per data point, so the latents are correlated
      under `q`; `ngvi.families.CoupledSiteGaussianVariational`, `O(C^3 N^3)` per step).
    - `weights`: optional non-negative weights `(n,)` of the points' expected
      log-likelihoods in the ELBO, `sum_i w_i E_q[log p(y_i | f_i)] - KL` (default: all 1).
      A point of weight 0 takes no part in the fit: its site stays empty and the posterior
      at the other points is the one without it.

    **Raises:** `ValueError` naming the problem (NaN/inf, mismatched shapes, empty inputs,
    labels outside the likelihood's support) before any compilation. A kernel matrix that is
    not numerically positive definite is reported by `fit`, which names the jitter to use.

    ```python
    model = ngvi.Model(ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X, y)
    ```
    """

    prior: AbstractPrior
    likelihood: AbstractLikelihood
    data: Data
    family: str = eqx.field(static=True)

    def __init__(
        self,
        prior: AbstractPrior,
        likelihood: AbstractLikelihood,
        X,
        y,
        *,
        family: str = "full",
        weights=None,
    ):
        if not isinstance(likelihood, AbstractLikelihood):
            raise TypeError(f"`likelihood` must be an AbstractLikelihood, got {type(likelihood)}.")
        if not isinstance(prior, AbstractPrior):
            raise TypeError(f"`prior` must be a GPPrior or a GaussianPrior, got {type(prior)}.")
        self.family = check_family(family, FAMILIES + ("coupled",))
        check_latents(prior, likelihood)
        if self.family == "coupled":
            _check_coupled(prior, likelihood)
        self.data = prepare_data(likelihood, X, y, weights)
        if isinstance(prior, GaussianPrior) and as_inputs(X).shape[1] != prior.dim:
            raise ValueError(
                f"The design matrix `X` has {as_inputs(X).shape[1]} columns but the "
                f"GaussianPrior has dimension {prior.dim}."
            )
        self.prior = prior
        self.likelihood = likelihood

    @property
    def supports_minibatch(self) -> bool:
        """A linear model can subsample its data; a dense GP's latent is the data itself."""
        return not self.prior.has_sites

    def _check_full(self, batch):
        if batch is not None and not self.supports_minibatch:
            raise ValueError(
                "A dense GP model fits all its data at once (its latent is f at every data "
                "point); for minibatches use `ngvi.SparseModel(prior, likelihood, X, y, "
                "inducing=M)`."
            )

    def whitened_view(self, batch):
        self._check_full(batch)
        at = None if batch is None else batch.X
        return self.prior.whitened_view(self.data.X, at)

    def whitened_view_at(self, X_new):
        return self.prior.whitened_view(self.data.X, X_new)

    def latent_coordinates(self):
        return self.prior.latent_coordinates(self.data.X)

    def num_coordinates(self):
        return self.prior.num_coordinates(self.data.X)

    def site_view(self, batch):
        self._check_full(batch)
        return self.prior.site_view(self.data.X)

    def site_prediction_view(self, X_new):
        return self.prior.site_prediction_view(self.data.X, X_new)

    def init_variational(self, form: str = "natural"):
        if self.family != "coupled":
            return super().init_variational(form)
        if form != "natural":
            raise ValueError(
                "The coupled family is held in natural parameters only (natural-gradient "
                "strategies: NaturalGradient, BLR); for Adam use family='full'."
            )
        return CoupledSiteGaussianVariational.at_prior(self.num_data, self.num_latent, self.dtype)

    def _full_natural_family(self, num_latent, dim, dtype):
        if self.prior.has_sites:
            return SiteGaussianVariational.at_prior(num_latent, dim, dtype)
        return super()._full_natural_family(num_latent, dim, dtype)

    def diagnose(self, q) -> str:
        """Names a prior covariance that is not numerically positive definite, with the jitter
        that its rounding calls for. `fit` asks before it starts (one Cholesky of the prior
        covariance): the site form would otherwise evaluate a finite, wrong ELBO under an
        indefinite kernel matrix."""
        if bool(prior_factor_is_finite(self)):
            return ""
        dtype = self.dtype
        if not self.prior.has_sites:
            return "The prior covariance is not numerically positive definite."
        covariance = np.asarray(self.prior.covariance(self.data.X), dtype=float)
        bad = ~np.isfinite(covariance)
        if bad.any():
            return (
                "The kernel matrix k(X, X) + jitter * I is not numerically positive definite: "
                f"it has {int(bad.sum())} NaN/inf entries (first at "
                f"{np.argwhere(bad)[0].tolist()}), so the kernel is not defined at these inputs "
                "with these parameters."
            )
        rounding = float(jnp.finfo(dtype).eps) * covariance.shape[0] * np.abs(covariance).max()
        hint = (
            f" In {dtype} the rounding of K alone is about {rounding:.1e}: use a jitter above "
            "that"
            + (
                ", or enable float64 (`jax.config.update('jax_enable_x64', True)`)."
                if jnp.finfo(dtype).bits < 64
                else "."
            )
        )
        return (
            "The kernel matrix k(X, X) + jitter * I is not numerically positive definite "
            "(its Cholesky factor is not finite): the kernel is not a valid covariance function "
            "or `jitter` is too small for these inputs." + hint
        )
