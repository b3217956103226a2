"""`fit`: the compiled optimisation loop shared by every strategy.

The loop is a `lax.while_loop` under `eqx.filter_jit`, compiled once per problem shape. It runs
in chunks so that a progress bar can advance between them; the chunk boundary is a traced
argument, so chunking never recompiles. Without hyperparameter learning the carry holds only the
variational parameters (the prior's `n x n` covariance stays outside the loop). With
`learn=LearnHyperparameters(...)` it also holds the learned part of the model and the optax
state, and each iteration is one strategy step on `q` then one optax step on the
hyperparameters (see `ngvi.hyperparameters`).
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray
from tqdm.auto import tqdm

from .hyperparameters import (
    LearnHyperparameters,
    has_learnable,
    hyperparameter_step,
    rebuild_variational,
)
from .models import AbstractModel
from .optimizers.base import AbstractOptimizer
from .variational import GaussianVariational


class FitOutcome(eqx.Enumeration):
    """How a fit ended."""

    converged = "the ELBO changed by less than the tolerance between steps"
    max_steps = "the step budget ran out before the ELBO met the tolerance"
    failed = "a step produced NaN/inf; the last finite posterior was kept"
    stalled = (
        "no step size kept the precision positive definite (every backoff was rejected); "
        "the last valid posterior was kept: try psd_correction=True, GaussNewton or a smaller lr"
    )


class History(eqx.Module):
    """Per-step record; entry `t` describes the posterior after step `t + 1`."""

    elbo: Float[Array, " steps"]
    step_size: Float[Array, " steps"]
    num_backoffs: Int[Array, " steps"]
    min_precision: Float[Array, " steps"]


class FitResult(eqx.Module):
    """What `fit` returns.

    - `q`: the fitted `GaussianVariational` (under `model`).
    - `elbo`: its exact ELBO (closed form / quadrature), equal to `model.elbo(q)`.
    - `initial_elbo`: the ELBO of the starting `q`.
    - `history`: per-step ELBO, accepted step size, step backoffs, smallest precision.
    - `num_steps`: steps taken.
    - `outcome`: a `FitOutcome` item; `result.message` says it in words.
    - `model`: the model `q` belongs to: the input model, with learned hyperparameters when
      `fit` was given `learn=` (same type as the input).
    """

    q: GaussianVariational
    elbo: Float[Array, ""]
    initial_elbo: Float[Array, ""]
    history: History
    num_steps: int
    outcome: FitOutcome
    model: AbstractModel

    @property
    def message(self) -> str:
        return FitOutcome[self.outcome]

    @property
    def converged(self) -> bool:
        return bool(self.outcome == FitOutcome.converged)

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


_RUNNING, _CONVERGED, _FAILED, _STALLED = 0, 1, 2, 3


class _Carry(eqx.Module):
    parameters: tuple
    state: object
    learned: object  # the learned leaves of the model (None without learning)
    learned_state: object  # their optax state (None without learning)
    previous: tuple  # (parameters, learned, learned_state) one step earlier
    step: Int[Array, ""]
    status: Int[Array, ""]
    elbo: Float[Array, " m"]  # elbo[s] = ELBO after s steps
    step_size: Float[Array, " m"]
    num_backoffs: Int[Array, " m"]
    min_precision: Float[Array, " m"]
    key: PRNGKeyArray


def _all_finite(tree) -> Array:
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


@eqx.filter_jit
def _run_chunk(model, optimizer, template, learn, carry: _Carry, stop_at, tol) -> _Carry:
    def running(c):
        return (c.status == _RUNNING) & (c.step < stop_at)

    def body(c):
        key, subkey = jax.random.split(c.key)
        step_model, q = _assemble(model, optimizer, template, learn, c.learned, c.parameters)
        new_q, state, info = optimizer.step(step_model, q, c.state, c.step, subkey)
        learned, learned_state = c.learned, c.learned_state
        if learn is not None:
            learned, learned_state = hyperparameter_step(
                learn, optimizer, learned, model, new_q.parameters, learned_state
            )
        current = (c.parameters, c.learned, c.learned_state)
        proposed = (new_q.parameters, learned, learned_state)
        s = c.step
        elbo = c.elbo.at[s].set(info.elbo)
        change = jnp.abs(info.elbo - c.elbo[jnp.maximum(s - 1, 0)])
        # `tol = 0` disables early stopping (as documented); a positive `tol` is floored at a
        # few ulps so that rounding noise cannot keep the loop going forever.
        threshold = jnp.where(
            tol > 0, jnp.maximum(tol, 100 * jnp.finfo(info.elbo.dtype).eps), -jnp.inf
        )
        converged = (s > 0) & (change <= threshold * (1.0 + jnp.abs(info.elbo)))
        bad_start = ~jnp.isfinite(info.elbo)
        bad_step = ~_all_finite((proposed, state))
        failed = bad_start | bad_step
        # On failure keep the last posterior (and hyperparameters) whose ELBO was finite.
        fallback = jax.tree.map(
            lambda prev, cur: jnp.where(bad_start, prev, cur), c.previous, current
        )
        parameters, learned, learned_state = jax.tree.map(
            lambda new, old: jnp.where(failed, old, new), proposed, fallback
        )
        state = jax.tree.map(lambda new, old: jnp.where(failed, old, new), state, c.state)
        # A strategy that backed off and rejected every step size reports step_size 0: q did not
        # move, so an unchanged ELBO would otherwise pass for convergence.
        stalled = (info.num_backoffs > 0) & (info.step_size <= 0)
        status = jnp.where(
            failed,
            _FAILED,
            jnp.where(stalled, _STALLED, jnp.where(converged, _CONVERGED, _RUNNING)),
        )
        return _Carry(
            parameters=parameters,
            state=state,
            learned=learned,
            learned_state=learned_state,
            previous=current,
            step=jnp.where(failed, s - bad_start.astype(s.dtype), s + 1),
            status=status,
            elbo=elbo,
            step_size=c.step_size.at[s].set(info.step_size),
            num_backoffs=c.num_backoffs.at[s].set(info.num_backoffs),
            min_precision=c.min_precision.at[s].set(info.min_precision),
            key=key,
        )

    return jax.lax.while_loop(running, body, carry)


@eqx.filter_jit
def _elbo(model, q):
    return model.elbo(q)


def _assemble(model, optimizer, template, learn, learned, parameters):
    """The model and `q` the loop is at. Without `learn`, `model` is the whole model and `q`
    the `template` with new parameters; with it, `model` is the fixed part, the learned leaves
    are combined back in and `q` is rebuilt under them (for a GP, `K` is recomputed)."""
    if learn is None:
        return model, template.with_parameters(parameters)
    full_model = eqx.combine(learned, model)
    return full_model, rebuild_variational(optimizer, full_model, parameters)


_assemble_jit = eqx.filter_jit(_assemble)


def fit(
    model: AbstractModel,
    optimizer: AbstractOptimizer,
    num_steps: int = 100,
    *,
    q: GaussianVariational | None = None,
    key: PRNGKeyArray | None = None,
    tol: float = 1e-9,
    progress: bool = True,
    throw: bool = True,
    learn: LearnHyperparameters | None = None,
) -> FitResult:
    """Fit the variational posterior of `model` with an optimizer strategy.

    Runs `optimizer.step` until the ELBO changes by at most `tol * (1 + |ELBO|)` between
    consecutive steps, or `num_steps` steps. Every step is checked for NaN/inf: a bad step
    ends the fit with `FitOutcome.failed` and the last finite posterior.

    With `learn`, each step is followed by one optax step on the model's hyperparameters
    `theta` (kernel variance and lengthscales, likelihood noise, ...), maximising
    `ELBO(theta, q)` with the variational parameters (for a GP: the sites) held fixed; `K` is
    recomputed from the kernel. The fixed point maximises `max_q ELBO(theta, q)`, which for a
    Gaussian likelihood is the exact log marginal likelihood.

    **Arguments:**

    - `model`: from `ngvi.Model(prior, likelihood, X, y)`.
    - `optimizer`: any strategy (`NaturalGradient`, `Adam`, `BLR`, `GaussNewton`, ...).
    - `num_steps`: the step budget.
    - `q`: starting posterior; defaults to the optimizer's initial family at the prior.
    - `key`: PRNG key for stochastic strategies (default `PRNGKey(0)`).
    - `tol`: relative ELBO tolerance for early stopping (`0` disables it).
    - `progress`: show a progress bar (it appears only once a fit has run for three seconds).
    - `throw`: raise `RuntimeError` if the fit failed (NaN/inf) instead of returning.
    - `learn`: a `LearnHyperparameters` (optax optimizer and which leaves to learn), or `None`
      to keep the hyperparameters fixed.

    **Returns:** a `FitResult`; `result.model` carries the learned hyperparameters.

    ```python
    result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=20)
    result.elbo, result.history.elbo, result.outcome

    learn = ngvi.LearnHyperparameters(optax.adam(1e-2))
    result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=500, learn=learn)
    result.model.prior.kernel.lengthscale, result.model.elbo(result.q) == result.elbo
    ```
    """
    if num_steps < 0:
        raise ValueError(f"`num_steps` must be non-negative, got {num_steps}.")
    if learn is not None and not isinstance(learn, LearnHyperparameters):
        raise TypeError(f"`learn` must be a LearnHyperparameters or None, got {type(learn)}.")
    initial = optimizer.init_variational(model) if q is None or learn is not None else None
    if q is None:
        q = initial
    learned, learned_state, loop_model = None, None, model
    if learn is not None:
        if type(q) is not type(initial):
            raise ValueError(
                f"With `learn`, `q` must be the optimizer's family ({type(initial).__name__}) so "
                f"that it can be rebuilt under new hyperparameters; got {type(q).__name__}."
            )
        learned, loop_model = learn.partition(model)
        if has_learnable(learned):
            learned_state = learn.optimizer.init(learned)
        else:  # nothing selected: the plain loop, no per-step rebuild
            learn, learned, loop_model = None, None, model
    key = jax.random.PRNGKey(0) if key is None else key
    dtype = model.y.dtype
    buffer = num_steps + 1
    carry = _Carry(
        parameters=q.parameters,
        state=optimizer.init(model, q),
        learned=learned,
        learned_state=learned_state,
        previous=(q.parameters, learned, learned_state),
        # A strongly typed 0: a weak one comes back from the while_loop strongly typed (the
        # body adds to it), and the next chunk would then recompile.
        step=jnp.asarray(0, dtype=jnp.result_type(int)),
        status=jnp.asarray(_RUNNING),
        elbo=jnp.full(buffer, jnp.nan, dtype),
        step_size=jnp.zeros(buffer, dtype),
        num_backoffs=jnp.zeros(buffer, jnp.int32),
        min_precision=jnp.zeros(buffer, dtype),
        key=key,
    )
    tol = jnp.asarray(tol, dtype)
    chunk = max(1, num_steps // 50) if progress else max(num_steps, 1)
    with tqdm(total=num_steps, disable=not progress, delay=3.0, desc="ngvi.fit") as bar:
        while int(carry.step) < num_steps and int(carry.status) == _RUNNING:
            before = int(carry.step)
            stop_at = jnp.asarray(min(before + chunk, num_steps))
            carry = _run_chunk(loop_model, optimizer, q, learn, carry, stop_at, tol)
            bar.update(int(carry.step) - before)
            bar.set_postfix(elbo=f"{float(carry.elbo[max(int(carry.step) - 1, 0)]):.6g}")
    steps = int(carry.step)
    # Without learning this only swaps in the parameters: no need to compile (or copy K).
    assemble = _assemble if learn is None else _assemble_jit
    final_model, final_q = assemble(
        loop_model, optimizer, q, learn, carry.learned, carry.parameters
    )
    final_elbo = _elbo(final_model, final_q)
    status = int(carry.status)
    outcome = {
        _RUNNING: FitOutcome.max_steps,
        _CONVERGED: FitOutcome.converged,
        _FAILED: FitOutcome.failed,
        _STALLED: FitOutcome.stalled,
    }[status]
    if status == _STALLED:
        warnings.warn(f"ngvi.fit stopped after {steps} steps: {FitOutcome[outcome]}.", stacklevel=2)
    if status == _FAILED and throw:
        raise RuntimeError(
            f"ngvi.fit failed after {steps} steps: a step produced NaN/inf. "
            "Try a smaller step size, the strategy's safeguards, or `throw=False` to get the "
            "last finite posterior."
        )
    elbos = carry.elbo.at[steps].set(final_elbo)
    history = History(
        elbo=elbos[1 : steps + 1],
        step_size=carry.step_size[:steps],
        num_backoffs=carry.num_backoffs[:steps],
        min_precision=carry.min_precision[:steps],
    )
    return FitResult(final_q, final_elbo, elbos[0], history, steps, outcome, final_model)
