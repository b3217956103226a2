"""`fit`: the one entry point that runs any strategy on any model."""

import os
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from .._interrupts import deliverable_interrupts
from ..families import AbstractVariational
from ..hyperparameters import LearnHyperparameters, has_learnable
from ..models import AbstractModel
from ..optimizers.base import AbstractOptimizer, StepInfo
from ..streaming import Feeder, Stream, check_stream, placeholder_batch
from .arguments import (
    check_arguments,
    check_hyperprior,
    checked_q,
    with_strong_learned_leaves,
)
from .batches import Minibatches, StreamedBatches
from .checkpoint import Checkpoint
from .diagnosis import (
    collapsed_step_size,
    describe_failure,
    fell_over_the_fit,
    quadrature_warning,
)
from .loop import Carry, Loop, run_chunk
from .outcome import FitOutcome, is_one_of
from .progress import Progress
from .result import FitResult


def fit(
    model: AbstractModel,
    optimizer: AbstractOptimizer,
    num_steps: int = 100,
    *,
    q: AbstractVariational | None = None,
    key: PRNGKeyArray | None = None,
    tol: float = 1e-9,
    batch_size: int | None = None,
    data: Stream | None = None,
    learn: LearnHyperparameters | None = None,
    progress: bool = True,
    throw: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
) -> FitResult:
    """Fit the variational posterior of `model` with an optimizer strategy.

    Runs `optimizer.step` on batches of the model's data (all of it by default) until the
    strategy's `terminate` says it has converged (the ELBO changed by at most
    `tol * (1 + |ELBO|)` per unit step size over its last steps), stalled, or its schedule
    ended, or `num_steps` steps have run. A step that produces NaN/inf ends the fit with
    `FitOutcome.failed` and the last finite posterior.

    With `learn`, each step is followed by one optax step on the model's hyperparameters
    `theta`, maximising `ELBO(theta, q)` with `q`'s parameters held fixed (see
    `ngvi.LearnHyperparameters`).

    **Arguments:**

    - `model`: a model (`ngvi.Model`, `ngvi.ParametricModel`, ...).
    - `optimizer`: any strategy (`NaturalGradient`, `Adam`, `BLR`, `GaussNewton`, ...).
    - `num_steps`: the step budget (a non-negative integer).
    - `q`: starting posterior; defaults to `model.init_variational(optimizer.form)`.
    - `key`: PRNG key for minibatches and stochastic strategies (default `PRNGKey(0)`).
    - `tol`: relative ELBO tolerance for convergence (`0` disables early stopping).
    - `batch_size`: draw batches of this many points (scaled by `N / B`); `None`: all data.
    - `data`: a `ngvi.Stream` of host rows for a model without data (then `batch_size` is
      required); the batches are those an in-memory fit with the same key would draw.
    - `learn`: a `LearnHyperparameters`, or `None` to keep the hyperparameters fixed.
    - `progress`: show progress: a bar on a terminal, a line per tenth of the steps when
      stderr is not one; both once a fit has run for three seconds (`ngvi.fitting.progress`).
    - `throw`: raise `RuntimeError` if the fit failed (NaN/inf) instead of returning.
    - `checkpoint`: a file to save the loop state to every `checkpoint_every` steps and when
      the fit ends or is interrupted (atomically); the same call run again resumes from it
      and refuses one written by a different fit (`ngvi.fitting.checkpoint`).

    **Returns:** a `FitResult`; `result.model` carries the learned hyperparameters.

    **Raises:** `ValueError` for bad arguments and for a starting ELBO that is not finite,
    naming the data points or the prior responsible.

    ```python
    result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=20)
    result.elbo, result.history.elbo, result.outcome
    ```
    """
    check_arguments(model, optimizer, num_steps, tol, batch_size, learn)
    check_stream(model, data, batch_size)
    num_steps = int(num_steps)
    if learn is not None:
        check_hyperprior(learn.hyperprior, model)
        model = with_strong_learned_leaves(model, learn)
    q = model.init_variational(optimizer.form) if q is None else checked_q(model, optimizer, q)
    q, state = optimizer.init(model, q)
    prior_problem = model.diagnose(q)  # a family may give a finite ELBO under an invalid prior
    if prior_problem:
        raise ValueError(prior_problem)
    initial_elbo, _, _ = _full_elbo(model, q, data)
    if not np.isfinite(float(initial_elbo)):
        raise ValueError(
            f"The starting ELBO is {float(initial_elbo)}. " + _describe(model, q, data)
        )
    loop, carry = _start(model, optimizer, q, state, num_steps, key, batch_size, learn, data)
    saver = Checkpoint.open(checkpoint, checkpoint_every, loop, carry, num_steps, tol, data)
    carry = carry if saver is None else saver.resume(carry)
    feeder = (
        None if data is None else Feeder(data, model, Minibatches(batch_size), carry.key, num_steps)
    )
    try:
        carry = _run(loop, carry, num_steps, jnp.asarray(tol, model.dtype), progress, feeder, saver)
    finally:
        if feeder is not None:
            feeder.close()
    if saver is not None:
        saver.finish(carry)
    return _finish(loop, carry, initial_elbo, throw, data)


def _default_key():
    """`jax.random.PRNGKey(0)` (raw threefry key data `[0, 0]`), without compiling the seeding."""
    return jax.device_put(np.zeros(2, np.uint32))


def _start(model, optimizer, q, state, num_steps, key, batch_size, learn, data):
    learned, learned_state, fixed = None, None, model
    if learn is not None:
        learned, fixed = learn.partition(model)
        if has_learnable(learned):
            learned_state = learn.optimizer.init(learned)
        else:  # nothing selected: the plain loop, said out loud
            warnings.warn(
                "ngvi.fit: `learn` selects no hyperparameters of this model (no floating-point "
                "array in a `learnable()` field, or none under `where`), so nothing is learned.",
                stacklevel=3,
            )
            learn, learned, fixed = None, None, model
    minibatches = None if batch_size is None else Minibatches(int(batch_size))
    batches = None if minibatches is None else minibatches.init(model.num_data)
    if data is not None:  # the state is the current batch, which `_run` feeds
        minibatches, batches = StreamedBatches(), placeholder_batch(model, data, batch_size)
    loop = Loop(fixed, optimizer.for_the_loop(model.dtype), learn, minibatches)
    # History buffers of a power-of-two length (at least 64): fits with different step
    # budgets share one compiled loop instead of compiling once per `num_steps`. Initial
    # values are made by numpy and `device_put`: `jnp.zeros`, `jnp.asarray` and friends
    # compile a small XLA program each on a process's first fit (~0.2 s together with the
    # step counter and the key below).
    dtype, length = model.dtype, max(64, 1 << int(num_steps).bit_length())
    zeros = np.zeros(length, dtype)
    history = StepInfo(
        elbo=jax.device_put(np.full(length, np.nan, dtype)),
        step_size=jax.device_put(zeros),
        num_backoffs=jax.device_put(np.zeros(length, np.int32)),
        min_precision=jax.device_put(zeros),
        scheduled_step_size=jax.device_put(zeros),
    )
    carry = Carry(
        q=q,
        state=state,
        learned=learned,
        learned_state=learned_state,
        previous=(q, learned, learned_state),
        batches=batches,
        # A strongly typed 0: a weak one comes back from the while_loop strongly typed, and
        # the next chunk would then recompile.
        step=jax.device_put(np.zeros((), jnp.result_type(int))),
        outcome=FitOutcome.max_steps,
        history=history,
        key=_default_key() if key is None else key,
    )
    return loop, carry


def _run(
    loop: Loop, carry: Carry, num_steps: int, tol, progress: bool, feeder=None, saver=None
) -> Carry:
    """Run the compiled loop in chunks sized to take about half a second each, so that the
    progress bar moves and Ctrl-C is answered within about a second: the interrupted fit
    returns the last completed chunk's state with the `interrupted` outcome (an interrupt
    that lands in a garbage-collector callback is delivered again, not dropped:
    `ngvi._interrupts`). A streamed fit (`feeder`) runs one step per chunk, each on the next
    batch the feeder has read."""
    chunk, target_seconds = 1, 0.5

    def shown_elbo(c: Carry):
        """The ELBO the progress bar shows, from the same compiled pass as before and after
        the loop (no third program to compile when a long fit shows its bar)."""
        return _elbo_report(loop.full_model(c.learned), c.q)[0]

    bar = Progress(num_steps, progress, None if feeder is not None else shown_elbo)
    with bar, deliverable_interrupts():
        try:
            while int(carry.step) < num_steps and is_one_of(carry.outcome, FitOutcome.max_steps):
                before, start = int(carry.step), time.perf_counter()
                if feeder is not None:
                    chunk = 1
                    carry = eqx.tree_at(lambda c: c.batches, carry, feeder.next())
                stop_at = min(before + chunk, num_steps)
                stop_at = stop_at if saver is None else saver.stop_at(before, stop_at)
                carry = run_chunk(loop, carry, np.asarray(stop_at, jnp.result_type(int)), tol)
                done = int(carry.step) - before
                elapsed = time.perf_counter() - start
                if saver is not None:
                    saver.after_chunk(carry)
                bar.update(carry, done)
                per_step = elapsed / max(done, 1)
                chunk = int(min(max(1, target_seconds / max(per_step, 1e-9)), 4 * chunk + 1))
        except KeyboardInterrupt:
            carry = eqx.tree_at(lambda c: c.outcome, carry, FitOutcome.interrupted)
    return carry


@eqx.filter_jit
def _elbo_report(model, q):
    return model.elbo_report(q, None, quadrature=True)


def _full_elbo(model, q, data):
    """The full-data ELBO of `q`, its Monte Carlo standard error and, in the same pass for
    in-memory data, the error of its quadrature (`None` for streamed data). The passes before
    and after the loop share this one compiled program: the quadrature check costs the
    starting pass little and a second program compiled 0.2-0.4 s more on a new shape."""
    if data is None:
        return _elbo_report(model, q)
    return (*data.elbo(model, q), None)


def _last_step_fell(loop: Loop, carry: Carry, final_elbo, steps: int) -> bool:
    """Whether a full-batch fit that converged ended with a step that lowered the ELBO by more
    than its rounding or the convergence tolerance allow (seen in float32: 0.14 nats)."""
    if (
        steps == 0
        or loop.minibatches is not None
        or not is_one_of(carry.outcome, FitOutcome.converged)
    ):
        return False
    history = np.asarray(carry.history.elbo)
    before, dtype = float(history[steps - 1]), history.dtype
    fall_tolerance = getattr(loop.strategy, "fall_tolerance", lambda model: 0.0)
    tolerance = float(fall_tolerance(loop.full_model(carry.learned)))
    margin = max(tolerance, 100 * float(np.finfo(dtype).eps))
    return float(final_elbo) < before - margin * (1.0 + abs(before))


def _is_none(x) -> bool:
    return x is None


def _describe(model, q, data) -> str:
    if data is None:
        return describe_failure(model, q)
    return model.diagnose(q) or "Check the streamed targets and the likelihood's `log_prob`."


def _finish(loop: Loop, carry: Carry, initial_elbo, throw: bool, data=None) -> FitResult:
    steps = int(carry.step)
    model = loop.full_model(carry.learned)
    final_elbo, error, quadrature = _full_elbo(model, carry.q, data)
    outcome = carry.outcome
    if _last_step_fell(loop, carry, final_elbo, steps):
        # Convergence is judged on the ELBOs before each step, so the step after the last
        # of them was never checked; where it lowered the ELBO, return the point it left.
        q, learned, _ = carry.previous
        carry = eqx.tree_at(lambda c: (c.q, c.learned), carry, (q, learned), is_leaf=_is_none)
        model = loop.full_model(carry.learned)
        final_elbo, error, quadrature = _full_elbo(model, carry.q, data)
    message = FitOutcome[outcome]
    if is_one_of(outcome, FitOutcome.failed):
        detail = (
            f"ngvi.fit failed after {steps} steps: {message}. {_describe(model, carry.q, data)}"
        )
        if throw:
            raise RuntimeError(detail + " Pass `throw=False` to get the last finite posterior.")
        warnings.warn(detail, stacklevel=3)
    elif is_one_of(outcome, FitOutcome.stalled, FitOutcome.schedule_ended, FitOutcome.interrupted):
        warnings.warn(f"ngvi.fit stopped after {steps} steps: {message}.", stacklevel=3)
    elif collapsed := collapsed_step_size(carry.history, steps):
        warnings.warn(f"ngvi.fit ran out of steps: {collapsed}", stacklevel=3)
    fallen = fell_over_the_fit(initial_elbo, final_elbo, error)
    if fallen and not is_one_of(outcome, FitOutcome.failed):
        warnings.warn(f"ngvi.fit: {fallen}", stacklevel=3)
    if data is None and not is_one_of(outcome, FitOutcome.failed):
        inaccurate = quadrature_warning(model, carry.q, final_elbo, quadrature)
        if inaccurate:
            warnings.warn(f"ngvi.fit: {inaccurate}", stacklevel=3)
    # Sliced on the host: slicing the device buffers compiled a program per length and dtype.
    history = jax.tree.map(lambda buffer: jax.device_put(np.asarray(buffer)[:steps]), carry.history)
    return FitResult(carry.q, final_elbo, initial_elbo, history, steps, outcome, model, error)
