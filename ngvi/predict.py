"""Predictions at new inputs: latent marginals and the likelihood's predictive moments."""

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float

from .models import AbstractModel, GPModel, LinearModel, _as_inputs
from .variational import GaussianVariational
from .whitened import AbstractWhitenedVariational


class Prediction(eqx.Module):
    """Predictive summaries at new inputs.

    - `latent_mean`, `latent_variance`: the marginals of `f(x*)` under `q`.
    - `mean`, `variance`: of `y*` with `f` integrated out, `E[y*]` and `Var[y*]`. For binary
      likelihoods `mean` is `P(y* = 1)` (probit: `Phi(mu / sqrt(1 + var))`); for Poisson the
      rate `exp(mu + var / 2)` per unit exposure; for a Gaussian `mu` and `var + s2`.
    """

    latent_mean: Float[Array, " m"]
    latent_variance: Float[Array, " m"]
    mean: Float[Array, " m"]
    variance: Float[Array, " m"]

    @property
    def probability(self) -> Float[Array, " m"]:
        """`P(y* = 1)` for binary likelihoods (same as `mean`)."""
        return self.mean


@eqx.filter_jit
def _latent_gp(model: GPModel, q, X_new):
    factors = q.factorise()
    cross = model.prior.cross_covariance(model.X, X_new)
    mean = model.prior.mean_vector(X_new) + cross.T @ factors.weights
    v = jsl.solve_triangular(factors.cholesky_b, factors.sqrt_w[:, None] * cross, lower=True)
    variance = model.prior.variance(X_new) - jnp.sum(v**2, axis=0)
    return mean, jnp.maximum(variance, 0.0)


@eqx.filter_jit
def _latent_gp_whitened(model: GPModel, q: AbstractWhitenedVariational, X_new):
    cross = model.prior.cross_covariance(model.X, X_new)
    return q.predict_latent(cross, model.prior.mean_vector(X_new), model.prior.variance(X_new))


@eqx.filter_jit
def _predictive(likelihood, mean, variance):
    return likelihood.predictive_moments(mean, variance)


def predict(model: AbstractModel, q: GaussianVariational, X_new) -> Prediction:
    """Predict at new inputs `X_new` (`(m,)` or `(m, d)`; a design matrix for linear models).

    GP latent marginals, from the site form with `B = L L^T`:

        E[f*]   = m0(x*) + k*^T a,            Var[f*] = k** - ||L^-1 W^1/2 k*||^2

    ```python
    pred = ngvi.predict(model, result.q, X_new)
    pred.latent_mean, pred.latent_variance, pred.mean
    ```
    """
    X_new = jnp.asarray(_as_inputs(X_new, "X_new"), model.X.dtype)
    if X_new.shape[1] != model.X.shape[1]:
        raise ValueError(
            f"`X_new` has {X_new.shape[1]} columns but the model was fitted on {model.X.shape[1]}."
        )
    if isinstance(model, GPModel) and isinstance(q, AbstractWhitenedVariational):
        mean, variance = _latent_gp_whitened(model, q, X_new)
    elif isinstance(model, GPModel):
        mean, variance = _latent_gp(model, q, X_new)
    elif isinstance(model, LinearModel):
        mean, variance = q.projected_marginals(X_new)
    else:
        raise TypeError(f"predict does not know how to handle {type(model).__name__}.")
    y_mean, y_variance = _predictive(model.likelihood, mean, variance)
    return Prediction(mean, variance, y_mean, y_variance)
