"""Predictions at new inputs: latent marginals and the likelihood's predictive moments."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._data import as_inputs
from .fitting.arguments import shape_mismatch
from .likelihoods import AbstractLikelihood


class Prediction(eqx.Module):
    """Predictive summaries at `m` new inputs (`(m,)` arrays for one latent function,
    `(m, C)` for several).

    - `latent_mean`, `latent_variance`: the marginals of `f(x*)` under `q`.
    - `mean`, `variance`: of `y*` with `f` integrated out, `E[y*]` and `Var[y*]`. For binary
      likelihoods `mean` is `P(y* = 1)` (probit: `Phi(mu / sqrt(1 + var))`); for Poisson the
      rate `exp(mu + var / 2)` per unit exposure; for a Gaussian `mu` and `var + s2`. `None`
      when the likelihood defines neither `predictive_moments` nor `conditional_moments`.
    """

    latent_mean: Float[Array, " m"]
    latent_variance: Float[Array, " m"]
    mean: Float[Array, " m"] | None
    variance: Float[Array, " m"] | None

    @property
    def probability(self) -> Float[Array, " m"]:
        """`P(y* = 1)` for binary likelihoods (same as `mean`)."""
        return self.mean


def _has_predictive(likelihood) -> bool:
    overridden = type(likelihood).predictive_moments is not AbstractLikelihood.predictive_moments
    return overridden or likelihood.has_conditional_moments


@eqx.filter_jit
def _predict(model, q, X_new):
    marginals = model.predict_latent(q, X_new)
    mean, variance = marginals.mean, marginals.variance
    if mean.shape[1] == 1:
        mean, variance = mean[:, 0], variance[:, 0]
    if not _has_predictive(model.likelihood):
        return (mean, variance, None, None), None
    moments = model.likelihood.predictive_moments(mean, variance)
    error = jnp.max(model.likelihood.predictive_error(mean, variance), initial=0.0)
    return (mean, variance, *moments), error


def predict(model, q, X_new) -> Prediction:
    """Predict at new inputs `X_new` (`(m,)` or `(m, d)`; a design matrix for linear models).

    The model computes the latent marginals from `q` (for a dense GP's sites,
    `E[f*] = m0(x*) + k*^T a` and `Var[f*] = k** - ||L^-1 W^1/2 k*||^2`) and the likelihood
    integrates the latent out.

    ```python
    pred = ngvi.predict(model, result.q, X_new)
    pred.latent_mean, pred.latent_variance, pred.mean
    ```
    """
    if model.num_inputs == 0:  # no inputs (a ParametricModel): nothing to predict at
        raise TypeError(
            f"{type(model).__name__} has no inputs to predict at; use `model.posterior(q)` "
            "for the posterior of its parameters."
        )
    X_new = jnp.asarray(as_inputs(X_new, "X_new"), model.dtype)
    if X_new.shape[1] != model.num_inputs:
        raise ValueError(
            f"`X_new` has {X_new.shape[1]} columns but the model was fitted on {model.num_inputs}."
        )
    try:
        fields, error = _predict(model, q, X_new)
    except (TypeError, ValueError) as error:
        mismatch = _q_mismatch(model, q)  # only looked for once the computation failed
        if mismatch:
            raise ValueError(mismatch) from error
        raise
    if error is not None:
        warn_if_inaccurate(model.likelihood, float(error), "ngvi.predict")
    return Prediction(*fields)


def warn_if_inaccurate(likelihood, error: float, caller: str, stacklevel: int = 2) -> None:
    """Warn when the likelihood's predictive probabilities may be off by more than `1e-3`
    (`error` = the largest `likelihood.predictive_error` over the points); `stacklevel` as the
    caller would pass it to `warnings.warn`."""
    if error > 1e-3:
        warnings.warn(f"{caller}: {likelihood.accuracy_advice(error)}", stacklevel=stacklevel + 1)


def _q_mismatch(model, q) -> str:
    """Why `q` is not a posterior of `model` (`""` if it is one): another family, or the
    parameters of a model of another size."""
    for form in ("natural", "moments"):
        expected = jax.eval_shape(lambda form=form: model.init_variational(form))
        if type(q) is type(expected):
            return shape_mismatch(q, expected)
    return f"`q` is a {type(q).__name__}, which is not a posterior family of this model."
