"""What `fit` returns."""

import equinox as eqx
import numpy as np
from jaxtyping import Array, Float

from ..families import AbstractVariational
from ..models import AbstractModel
from ..optimizers.base import StepInfo
from .outcome import FitOutcome, is_one_of


class FitResult(eqx.Module):
    """What `fit` returns.

    - `q`: the fitted family (holding only its parameters; read it with `model`).
    - `elbo`: its ELBO under `model`, equal to `model.elbo(q)`.
    - `initial_elbo`: the ELBO of the starting `q`.
    - `history`: the stacked `StepInfo` of every step (`history.elbo[t]` is the ELBO before
      step `t`, `history.step_size[t]` the step size it accepted, ...).
    - `num_steps`: steps taken.
    - `outcome`: a `FitOutcome` item; `result.message` says it in words.
    - `model`: the model `q` belongs to: the input model, with learned hyperparameters when
      `fit` was given `learn=`.
    - `elbo_error`: the standard error of `elbo` when the likelihood's expectations are Monte
      Carlo (several latents without a closed form, e.g. `Softmax`); 0 when they are exact.
    """

    q: AbstractVariational
    elbo: Float[Array, ""]
    initial_elbo: Float[Array, ""]
    history: StepInfo
    num_steps: int = eqx.field(static=True)
    outcome: FitOutcome
    model: AbstractModel
    elbo_error: Float[Array, ""] = 0.0

    @property
    def message(self) -> str:
        return FitOutcome[self.outcome]

    @property
    def converged(self) -> bool:
        return is_one_of(self.outcome, FitOutcome.converged)

    @property
    def posterior(self) -> tuple[Array, Array]:
        """`model.posterior(q)`: mean `(C, D)` and covariance `(C, D, D)` in the model's
        coordinates (`f(X)` for a dense GP, the weights for a linear model)."""
        return self.model.posterior(self.q)

    @property
    def diagnostics(self) -> dict:
        """What the safeguards did, summarised over the whole fit."""
        history = self.history
        has_steps = self.num_steps > 0
        return {
            "outcome": self.message,
            "num_steps": self.num_steps,
            "final_step_size": float(history.step_size[-1]) if has_steps else float("nan"),
            "total_backoffs": int(np.sum(history.num_backoffs)),
            "min_precision": float(np.min(history.min_precision)) if has_steps else float("nan"),
        }
