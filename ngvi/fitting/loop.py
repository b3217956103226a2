"""The compiled fit loop: a `lax.while_loop` run in chunks, compiled once per problem shape.

The chunk boundary is a traced argument, so running in chunks (for the progress bar and for
Ctrl-C) never recompiles. Each iteration: draw the batch (if minibatching), one strategy step
on `q`, one optax step on the learned hyperparameters (if learning), record the `StepInfo`,
and ask the strategy whether to stop. A step that produces NaN/inf ends the loop with the last
finite state.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray

from ..optimizers.base import StepInfo
from .outcome import FitOutcome


class Carry(eqx.Module):
    q: eqx.Module
    state: object
    learned: object  # the learned leaves of the model (None without learning)
    learned_state: object  # their optax state (None without learning)
    previous: tuple  # (q, learned, learned_state) one step earlier
    batches: object  # the minibatch sampler's state (None for full batches)
    step: Int[Array, ""]
    outcome: FitOutcome
    history: StepInfo  # buffers of a power-of-two length > num_steps
    key: PRNGKeyArray


class Loop(eqx.Module):
    """Everything fixed during a fit: the model (its learned leaves removed when learning),
    the strategy, the hyperparameter learner and the minibatch sampler."""

    model: eqx.Module
    strategy: eqx.Module
    learn: eqx.Module | None
    minibatches: eqx.Module | None

    def full_model(self, learned):
        return self.model if self.learn is None else eqx.combine(learned, self.model)

    def iterate(self, c: Carry, tol) -> Carry:
        key, step_key, batch_key = jax.random.split(c.key, 3)
        model = self.full_model(c.learned)
        batch, batches = None, c.batches
        if self.minibatches is not None:
            batch, batches = self.minibatches.draw(model, c.batches, batch_key)
        q, state, info = self.strategy.step(model, c.q, c.state, batch, c.step, step_key)
        learned, learned_state, stationary = c.learned, c.learned_state, jnp.asarray(True)
        if self.learn is not None:
            learned, learned_state, stationary = self.learn.step(
                c.learned, self.model, q, batch, c.learned_state
            )
            state = self.strategy.after_model_moved(self.full_model(learned), state, batch)
        s = c.step
        history = jax.tree.map(
            lambda buffer, value: buffer.at[s].set(value.astype(buffer.dtype)), c.history, info
        )
        # The q this step started from was already bad, unless the strategy went back from it
        # (full batch, fixed hyperparameters: the point before it is still valid).
        retreats = self.strategy.retreats_from_minus_infinity and self.learn is None
        overshot = (retreats and batch is None) & (s > 0) & (info.elbo == -jnp.inf)
        bad_input = ~jnp.isfinite(info.elbo) & ~overshot
        failed = bad_input | ~_all_finite((q, state, learned, learned_state))
        outcome = self.strategy.terminate(history, s, tol)
        # With learned hyperparameters "converged" also needs their gradient to be small.
        moving = (outcome == FitOutcome.converged) & ~stationary
        outcome = FitOutcome.where(moving, FitOutcome.max_steps, outcome)
        outcome = FitOutcome.where(failed, FitOutcome.failed, outcome)
        current = (c.q, c.learned, c.learned_state)
        fallback = jax.tree.map(lambda a, b: jnp.where(bad_input, a, b), c.previous, current)
        proposed = (q, learned, learned_state)
        q, learned, learned_state = jax.tree.map(
            lambda old, new: jnp.where(failed, old, new), fallback, proposed
        )
        state = jax.tree.map(lambda new, old: jnp.where(failed, old, new), state, c.state)
        return Carry(
            q=q,
            state=state,
            learned=learned,
            learned_state=learned_state,
            previous=current,
            batches=batches,
            step=jnp.where(failed, s - bad_input.astype(s.dtype), s + 1),
            outcome=outcome,
            history=history,
            key=key,
        )


def _all_finite(tree) -> Array:
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


@eqx.filter_jit
def run_chunk(loop: Loop, carry: Carry, stop_at, tol) -> Carry:
    """Iterate until the strategy stops, a step fails, or `carry.step == stop_at`."""

    def running(c):
        return (c.outcome == FitOutcome.max_steps) & (c.step < stop_at)

    return jax.lax.while_loop(running, lambda c: loop.iterate(c, tol), carry)
