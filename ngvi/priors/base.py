"""Gaussian priors: a GP prior over function values and a dense Gaussian over weights.

A prior tells a model how its latent at any inputs depends on *whitened coordinates*
`v ~ N(0, I)` (a `RowsView`, see `ngvi.families.views`):

- `GPPrior`, coordinates at inputs `Z` (the training inputs for a dense model, the inducing
  inputs for a sparse one): `f(Z) = m0 + L v` with `L = chol(K(Z, Z) + jitter I)`, and at other
  inputs `f(x) = m0 + a(x)^T v + e(x)`, `a(x) = L^-1 k(Z, x)`, `Var[e(x)] = k(x, x) - ||a(x)||^2`
  (no jitter there);
- `GaussianPrior` over the weights of `f = x^T w`: `w = m0 + L0 v`, so `f(x) = x^T m0 +
  (L0^T x)^T v` exactly.
"""

import abc
from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float

from ..families.sites import SitePredictionView, SiteView
from ..families.views import JointView, RowsView


class AbstractPrior(eqx.Module):
    """What a model needs from its prior (see the module docstring)."""

    has_sites: ClassVar[bool] = False
    """Whether the prior is over the latent at the data points themselves (a dense GP), so
    that the site family applies."""

    @abc.abstractmethod
    def num_coordinates(self, inputs: Float[Array, "n d"]) -> int:
        """The dimension `D` of the whitened coordinates for a model on `inputs`."""

    @abc.abstractmethod
    def whitened_view(
        self, inputs: Float[Array, "n d"], at: Float[Array, "m d"] | None = None
    ) -> RowsView:
        """The latent at `at` (default: at `inputs` themselves) in whitened coordinates."""

    @abc.abstractmethod
    def latent_coordinates(self, inputs: Float[Array, "n d"]) -> JointView:
        """`o + L v`: the model's natural coordinates in terms of the whitened ones."""

    @property
    def num_latent(self) -> int | None:
        """The number of latent functions the prior is specific to (`None`: any, shared)."""
        return None

    def site_view(self, inputs: Float[Array, "n d"]) -> SiteView:
        raise TypeError(
            f"A {type(self).__name__} has no latent per data point, so the site family does "
            "not apply; use the model's own `init_variational()`."
        )

    def site_prediction_view(self, inputs, X_new) -> SitePredictionView:
        return self.site_view(inputs)
