"""What `ngvi.fit_hyperparameters` returns: its outcome and result."""

import equinox as eqx
from jaxtyping import Array, Float, Int

from ..families import AbstractVariational
from ..models import AbstractModel


class HyperparameterOutcome(eqx.Enumeration):
    """How `fit_hyperparameters` ended (`result.outcome`; `result.message` in words)."""

    converged = (
        "converged: the gradient of F = max_q ELBO and its last change are below the tolerances"
    )
    max_steps = "the step budget ran out before the gradient of F met the tolerance"
    stalled = (
        "the line search found no step that increases F before the gradient met the tolerance; "
        "the best hyperparameters were kept"
    )
    failed = (
        "a step produced NaN/inf (30 halvings of it did too); the last finite hyperparameters "
        "were kept"
    )


class HyperparameterResult(eqx.Module):
    """What `fit_hyperparameters` returns.

    - `model`: the input model with the learned hyperparameters.
    - `q`: the posterior re-solved for them (read it with `model`).
    - `elbo`: `model.elbo(q)`, the bound `F` at the learned hyperparameters.
    - `grad_norm`: the largest component of `dF/dtheta` (unconstrained parameters) there
      (with a `hyperprior`: of `F + log p(theta)`).
    - `elbo_change`: how much the last iteration raised `F` (`F + log p(theta)`).
    - `num_steps`: L-BFGS iterations; `num_inner_steps`: natural-gradient steps in all.
    - `outcome`: a `HyperparameterOutcome`; `converged` says whether it is `converged`.
    - `kl`: `KL(q || p)` at the learned hyperparameters (near 0: the data moved nothing).
    """

    model: AbstractModel
    q: AbstractVariational
    elbo: Float[Array, ""]
    grad_norm: Float[Array, ""]
    elbo_change: Float[Array, ""]
    num_steps: Int[Array, ""]
    num_inner_steps: Int[Array, ""]
    outcome: HyperparameterOutcome
    kl: Float[Array, ""]

    @property
    def message(self) -> str:
        return HyperparameterOutcome[self.outcome]

    @property
    def converged(self) -> bool:
        return bool(self.outcome == HyperparameterOutcome.converged)

    @property
    def explains_nothing(self) -> str:
        """What `fit_hyperparameters` warns when the posterior stayed at the prior."""
        return (
            f"the learned hyperparameters leave the posterior at the prior (KL(q || p) = "
            f"{float(self.kl):.2g} nats): the latent function explains none of the data, either "
            "because the data carry no signal this model can use, or because the fit settled "
            "on a plateau of F where its gradient vanishes (lengthscales far longer or shorter "
            "than the inputs' spacing, or a vanishing signal variance). If the data have "
            "structure, start from other hyperparameters (signal variance ~1, lengthscales "
            "near the inputs' spread)."
        )
