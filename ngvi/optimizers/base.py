"""The interface every optimizer strategy implements, in the spirit of optax."""

import abc
import math
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ..fitting.outcome import FitOutcome, converged_within, vanishing_step_size

StepSize = float | Callable[[Int[Array, ""]], Float[Array, ""]]
"""A step size: a float, or an optax-style schedule `step -> value`."""


def step_size_at(step_size: StepSize, step: Int[Array, ""]) -> Float[Array, ""]:
    """Evaluate a float-or-schedule step size at a step count."""
    return jnp.asarray(step_size(step) if callable(step_size) else step_size)


def default_step_size(step: Int[Array, ""], scale) -> Float[Array, ""]:
    """The natural-gradient step size when none is given: `1` for full-batch steps
    (`scale = N / B = 1`), and `1 / (1 + t B / N)` for minibatches.

    With minibatches the target is an unbiased but noisy estimate, so `q` must average targets
    over steps; `1 / (1 + epochs)` makes the natural parameters a running average whose weights
    are set in epochs (the unit in which the data's information arrives), so the schedule
    needs no tuning across data sizes and batch sizes. On banana-5300 (M = 64, B = 256) it ends
    within 0.06 nats of the full-batch optimum after 2000 steps.
    """
    if scale == 1.0:
        return jnp.asarray(1.0)
    return jnp.asarray(1.0 / (1.0 + step / scale))


def check_step_size(step_size: StepSize | None, upper: float | None = None) -> None:
    """Raise for a float step size that is not finite and positive (or above `upper`)."""
    if step_size is None or callable(step_size):
        return
    try:
        value = float(step_size)
    except (TypeError, ValueError):
        raise ValueError(f"`lr` must be a number or a schedule, got {step_size!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`lr` must be a finite positive number, got {step_size!r}.")
    if upper is not None and value > upper:
        raise ValueError(f"`lr` must be in (0, {upper:g}], got {step_size!r}.")


class StepInfo(eqx.Module):
    """What one step reports; `fit` stacks them into `result.history`.

    - `elbo`: the ELBO of the `q` the step *started from* (exact where the likelihood has
      closed forms or quadrature; on a minibatch, the unbiased estimate).
    - `step_size`: the step size accepted (after any backoff; 0 if every one was rejected).
    - `num_backoffs`: how many times the step size was halved to keep the precision valid.
    - `min_precision`: the smallest stored precision after the step.
    - `scheduled_step_size`: the step size the schedule asked for.
    """

    elbo: Float[Array, ""]
    step_size: Float[Array, ""]
    num_backoffs: Int[Array, ""]
    min_precision: Float[Array, ""]
    scheduled_step_size: Float[Array, ""]


class AbstractOptimizer(eqx.Module):
    """An optimizer strategy: pure `init`, `step` and `terminate`, interchangeable in `fit`.

    - `form`: which form of the model's family it moves (`"natural"` or `"moments"`), passed
      to `model.init_variational`.
    - `init(model, q) -> (q, state)`: the starting point (a strategy may adjust it, e.g. give
      sites a positive precision) and its state.
    - `step(model, q, state, batch, step_count, key) -> (q, state, StepInfo)`: one update
      from the data in `batch` (`None`: all of the model's data).
    - `terminate(history, t, tol)`: the `FitOutcome` after step `t` (`max_steps` to go on).
    """

    form: ClassVar[str] = "natural"
    convergence_window: ClassVar[int] = 2
    """How many consecutive steps must meet the tolerance."""
    retreats_from_minus_infinity: ClassVar[bool] = False
    """Whether a full-batch `step` from a `q` whose ELBO is `-inf` (an overshoot: the
    previous step's result) goes back to the finite point before it (then `fit` goes on;
    otherwise, and for a NaN ELBO always, it ends the fit as `failed` at that point)."""

    @property
    def smoothing(self) -> int:
        """Steps the ELBO is averaged over before judging convergence (1: deterministic)."""
        return 1

    traced_step_size: ClassVar[bool] = False
    """Whether `fit` may hand the compiled loop a float `lr` as an array: then fits that
    differ only in the step size share one compiled loop (a Python float is part of what a
    compiled function is specialised to). Only for strategies that never branch on `lr` in
    Python."""

    def for_the_loop(self, dtype) -> "AbstractOptimizer":
        """The strategy as the compiled loop takes it: a float `lr` becomes an array of
        `dtype` where `traced_step_size` allows it."""
        lr = getattr(self, "lr", None)
        if not self.traced_step_size or isinstance(lr, bool) or not isinstance(lr, int | float):
            return self
        return eqx.tree_at(lambda strategy: strategy.lr, self, np.asarray(lr, dtype))

    def init(self, model, q) -> tuple:
        """`(q, state)` for a starting `q` (default: `q` unchanged, no state)."""
        return q, None

    def after_model_moved(self, model, state: PyTree, batch) -> PyTree:
        """The state once `fit(..., learn=...)` has moved the hyperparameters after a step on
        `batch`; `model` is the moved model. A strategy that compares ELBOs across steps must
        not compare ELBOs of two models. Default: the state unchanged."""
        return state

    @abc.abstractmethod
    def step(
        self, model, q, state: PyTree, batch, step_count: Int[Array, ""], key: PRNGKeyArray
    ) -> tuple:
        """One update of `q`; `step_count` (from 0) drives step-size schedules."""

    def terminate(self, history: StepInfo, t: Int[Array, ""], tol) -> FitOutcome:
        """Stalled when every step size was rejected; `schedule_ended` when the schedule asks
        for 0 (at most `100 eps`); converged when `converged_within` says so; otherwise go on
        (`max_steps`)."""
        stalled = (history.num_backoffs[t] > 0) & (history.step_size[t] <= 0)
        scheduled = history.scheduled_step_size[t]
        ended = scheduled <= vanishing_step_size(scheduled.dtype)
        window = max(self.convergence_window, self.smoothing)
        converged = converged_within(
            history.elbo, history.step_size, t, tol, window, self.smoothing
        )
        going_on = FitOutcome.where(converged, FitOutcome.converged, FitOutcome.max_steps)
        return FitOutcome.where(
            stalled,
            FitOutcome.stalled,
            FitOutcome.where(ended, FitOutcome.schedule_ended, going_on),
        )
