"""The interface every optimizer strategy implements, in the spirit of optax."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ..models import AbstractModel
from ..variational import GaussianVariational

StepSize = float | Callable[[Int[Array, ""]], Float[Array, ""]]
"""A step size: a float, or an optax-style schedule `step -> value`."""


def step_size_at(step_size: StepSize, step: Int[Array, ""]) -> Float[Array, ""]:
    """Evaluate a float-or-schedule step size at a step count."""
    return jnp.asarray(step_size(step) if callable(step_size) else step_size)


class StepInfo(eqx.Module):
    """What one step reports; the fit loop turns these into its history and diagnostics.

    - `elbo`: the exact ELBO of the `q` the step *started from* (computed from the
      factorisation the step needs anyway).
    - `step_size`: the step size accepted.
    - `num_backoffs`: how many times the step size was halved to keep the precision PD.
    - `min_precision`: the smallest site (or diagonal) precision after the step.
    """

    elbo: Float[Array, ""]
    step_size: Float[Array, ""]
    num_backoffs: Int[Array, ""]
    min_precision: Float[Array, ""]


class AbstractOptimizer(eqx.Module):
    """An optimizer strategy: pure `init` and `step`, interchangeable in `ngvi.fit`.

    Subclasses hold their hyperparameters as fields and implement

    - `init(model, q) -> state`
    - `step(model, q, state, step_count, key) -> (q, state, StepInfo)`
    """

    def init_variational(self, model: AbstractModel) -> GaussianVariational:
        """The family this strategy moves, at its starting point (default: the prior)."""
        return model.init_variational()

    @abc.abstractmethod
    def init(self, model: AbstractModel, q: GaussianVariational) -> PyTree:
        """The optimizer state for a starting `q`."""

    @abc.abstractmethod
    def step(
        self,
        model: AbstractModel,
        q: GaussianVariational,
        state: PyTree,
        step_count: Int[Array, ""],
        key: PRNGKeyArray,
    ) -> tuple[GaussianVariational, PyTree, StepInfo]:
        """One update of `q`; `step_count` (from 0) drives step-size schedules."""
