r"""`fit_hyperparameters`: type-II maximum likelihood by variational EM with L-BFGS.

The hyperparameters `theta` (every `ngvi.learnable()` field, in its unconstrained
log-parametrisation) maximise the collapsed bound

$$
F(\theta) = \max_q \mathrm{ELBO}(\theta, q),
$$

the exact log marginal likelihood for a Gaussian likelihood. With `q`'s parameters (a dense
GP's sites) at their optimum `q*` for `theta`, the envelope theorem gives
`dF/dtheta = d ELBO(theta, q*)/dtheta` with `q*` held fixed, and
`ELBO(theta', q*) <= F(theta')` is a minoriser of `F` that is tight at `theta`. So one
iteration

1. takes an L-BFGS step on `theta -> ELBO(theta, q*)` with `q*` fixed, at most
   `MAX_LOG_STEP` (10) in any log-hyperparameter, with a backtracking line search that enforces
   sufficient increase (Armijo) of this minoriser. Its value at a trial `theta'` is the ELBO
   that the first natural step of step 2 computes anyway: a trial that falls short ends the
   re-solve there and halves the step (one ELBO less in the compiled loop, which compiles
   and runs faster);
2. re-solves `q` for the new `theta` by natural-gradient steps warm-started at the old `q*`,
   until the ELBO changes in a step by at most `inner_tol * (1 + |ELBO|)` or
   `inner_fraction` (0.1) times the last increase of `F`, whichever is larger: an inexact
   E-step far from the optimum, exact as `F` settles (at convergence the re-solve has met a
   tenth of `ftol`). On breast cancer this cut the natural steps from 20 per iteration (the
   budget) to about 3.5, at the same convergence test;

so `F` never decreases (the re-solve returns the best `q` it evaluated; a step that still
lowers `F` ends as `stalled`). A candidate whose re-solve or gradient is NaN/inf (the line
search sees only the minoriser's values) is rejected and the step towards it halved, up to 30
times before the fit ends as `failed`. **Converged** means `max |dF/dtheta| <= gtol (1 + |F|)`
*and* a last change of `F` of at most `ftol (1 + |F|)`. One `lax.while_loop`, compiled per
shape. A converged fit whose posterior is still the prior (`KL(q || p)` below
`1e-6 (1 + |F|)`) warns: `F`'s gradient also vanishes on its plateaus (a constant or white-noise
kernel at the data, a vanishing signal variance), where no local test can tell a plateau
from an optimum.
"""

import math
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from ..families import AbstractVariational
from ..hyperparameters import LearnHyperparameters, has_learnable
from ..models import AbstractModel
from ..optimizers import NaturalGradient
from ..optimizers.base import AbstractOptimizer
from .arguments import check_em_settings, check_hyperprior, checked_q
from .diagnosis import describe_failure, quadrature_warning
from .em_result import HyperparameterOutcome, HyperparameterResult
from .lbfgs import empty_memory, line_search_start, remember as _remember
from .loop import _all_finite

MAX_LOG_STEP = 10.0
"""The largest change of any log-hyperparameter in one L-BFGS step (a factor `e^10 ~ 2e4`): a
safeguard against absurd jumps, not a trust region. An uncapped quasi-Newton step from
lengthscale 1000 on Poisson counts jumped to 1e-23, where the kernel underflows to white
noise and `dF/dtheta` is exactly 0: "converged" 202 nats below the optimum; capped, the same
start reaches the optimum. Tighter caps change which local optimum ARD fits reach: ionosphere's
held-out NLPD 0.295 uncapped, 0.305 at 10, 0.326 at 3 and 6 (the folds' spread: 0.07)."""


def fit_hyperparameters(
    model: AbstractModel,
    q: AbstractVariational | None = None,
    *,
    where=None,
    strategy: AbstractOptimizer | None = None,
    hyperprior: Callable[[AbstractModel], Array] | None = None,
    max_steps: int = 100,
    gtol: float = 1e-5,
    ftol: float = 1e-9,
    inner_tol: float = 1e-13,
    inner_fraction: float = 0.1,
    max_inner_steps: int = 20,
    memory_size: int = 10,
    throw: bool = True,
) -> HyperparameterResult:
    r"""Learn `model`'s hyperparameters by variational EM with L-BFGS (module docstring):
    maximise `F(theta) = max_q ELBO(theta, q)` until `max |dF/dtheta| <= gtol (1 + |F|)` and
    the last change of `F` is at most `ftol (1 + |F|)`.

    **Arguments:**

    - `model`: a model whose learnable fields hold the starting hyperparameters.
    - `q`: the starting posterior (default: the prior, `model.init_variational()`).
    - `where`: which hyperparameters to learn, as in `ngvi.LearnHyperparameters` (default:
      every `ngvi.learnable()` field).
    - `strategy`: the natural-gradient strategy that re-solves `q` (default
      `NaturalGradient(lr=1.0)`, exact in one step for a Gaussian likelihood).
    - `hyperprior`: `model -> log p(theta)` up to a constant (e.g. `ngvi.SignalVariancePrior`):
      maximise `F + log p(theta)` instead (MAP-II); the gradient test is then that sum's.
    - `max_steps`: the budget of L-BFGS iterations.
    - `gtol`, `ftol`: the convergence tolerances, relative to `1 + |F|` (floored at
      `100 eps` of the model's dtype).
    - `inner_tol`, `inner_fraction`, `max_inner_steps`: when a re-solve of `q` stops (module
      docstring; `inner_fraction=0` re-solves to `inner_tol` every time); `memory_size`:
      L-BFGS pairs.
    - `throw`: raise `RuntimeError` if a step produced NaN/inf (and 30 halvings of it did too)
      instead of returning.

    **Raises:** `ValueError` for a starting ELBO that is not finite (naming the data points
    or the part of the prior that make it so).

    **Returns:** a `HyperparameterResult`; `result.converged` is `True` only for the
    `converged` outcome.

    ```python
    result = ngvi.fit_hyperparameters(model)
    result.converged, result.grad_norm, result.model.prior.kernel.lengthscale
    ```
    """
    if not isinstance(model, AbstractModel):
        raise TypeError(f"`model` must be an ngvi model, got {type(model).__name__}.")
    check_em_settings(
        max_steps=max_steps, max_inner_steps=max_inner_steps, memory_size=memory_size,
        gtol=gtol, ftol=ftol, inner_tol=inner_tol, inner_fraction=inner_fraction,
    )  # fmt: skip
    check_hyperprior(hyperprior, model)
    strategy = NaturalGradient(lr=1.0) if strategy is None else strategy
    learned, rest = LearnHyperparameters(where=where).partition(model)
    if not has_learnable(learned):
        raise ValueError("The model has no hyperparameters to learn (`where` selects nothing).")
    q = model.init_variational(strategy.form) if q is None else checked_q(model, strategy, q)
    problem = model.diagnose(q)
    if problem:
        raise ValueError(problem)
    floor = 100 * float(jnp.finfo(model.dtype).eps)
    tolerances = [jnp.asarray(max(float(t), floor), model.dtype) for t in (gtol, ftol, inner_tol)]
    tolerances.append(jnp.asarray(inner_fraction, model.dtype))
    result = _solve(
        learned, rest, q, strategy, hyperprior, int(memory_size), jnp.asarray(max_steps),
        jnp.asarray(max_inner_steps), *tolerances,
    )  # fmt: skip
    if result.outcome == HyperparameterOutcome.failed and int(result.num_steps) == 0:
        start = float(model.elbo(q))  # checked here, not before: one compilation less
        if not math.isfinite(start):  # no finite hyperparameters to fall back on
            raise ValueError(f"The starting ELBO is {start}. " + describe_failure(model, q))
    if throw and result.outcome == HyperparameterOutcome.failed:
        raise RuntimeError(
            f"fit_hyperparameters failed after {int(result.num_steps)} steps: {result.message}. "
            "Pass `throw=False` to get the last finite hyperparameters."
        )
    if result.outcome != HyperparameterOutcome.failed:
        inaccurate = quadrature_warning(result.model, result.q, result.elbo)
        if inaccurate:
            warnings.warn(f"ngvi.fit_hyperparameters: {inaccurate}", stacklevel=2)
        if float(result.kl) < 1e-6 * (1.0 + abs(float(result.elbo))):  # the data moved nothing
            warnings.warn(f"ngvi.fit_hyperparameters: {result.explains_nothing}", stacklevel=2)
    return result


class _Carry(eqx.Module):
    theta: Array  # the candidate, `best theta + alpha d`, evaluated at the next iteration
    q: AbstractVariational  # the posterior to warm-start the candidate's re-solve from
    memory: tuple  # L-BFGS pairs (S, Y) `(m, p)`, how many are stored, the newest's slot
    best: tuple  # the last accepted (theta, q, -F, -dF/dtheta, KL(q || p))
    search: tuple  # the line search from `best`: direction `d`, step `alpha`, slope `grad . d`
    change: Array  # how much the last accepted iteration raised F
    step: Array
    inner_steps: Array
    halvings: Array  # of `alpha` since the last accepted iteration
    outcome: HyperparameterOutcome


@eqx.filter_jit
def _solve(
    learned, rest, q, strategy, hyperprior, memory_size, max_steps, max_inner, gtol, ftol,
    inner_tol, fraction,
):  # fmt: skip
    theta, unravel = ravel_pytree(learned)
    Outcome = HyperparameterOutcome

    def model_at(theta):
        return eqx.combine(unravel(theta), rest)

    def log_hyperprior(model):
        return jnp.zeros((), theta.dtype) if hyperprior is None else hyperprior(model)

    def negative_objective(theta, q):  # -(ELBO + log p(theta)): what the L-BFGS steps lower
        model = model_at(theta)
        marginals, kl = model.latent_marginals_and_kl(q)
        elbo = model.elbo_from_marginals(marginals, kl)
        return -(elbo + log_hyperprior(model)), kl

    def resolve(theta, q, enough, bound):
        """Natural-gradient steps on `q` at `theta` until the ELBO changes by at most `enough`
        or its relative tolerance, or the budget is spent; returns the best `q` evaluated (at
        least as good as the warm start, so `F` cannot fall), the steps, and whether the
        first step's ELBO, the minoriser `ELBO(theta, q_warm) + log p(theta)`, met the line
        search's `bound` (if not, the re-solve stops there)."""
        model = model_at(theta)
        q, state = strategy.init(model, q)
        key = jax.random.PRNGKey(0)

        def running(c):
            _, _, k, last, change, _, sufficient = c
            settled = change <= jnp.maximum(inner_tol * (1.0 + jnp.abs(last)), enough)
            return sufficient & (k <= max_inner) & ((k < 1) | ~settled)

        def body(c):
            # `info.elbo` is the ELBO of `q`, before the step: one step past the budget only
            # evaluates the last `q`, whose step is discarded.
            q, state, k, last, _, (best, top), sufficient = c
            new, state, info = strategy.step(model, q, state, None, k, key)
            minoriser = -(info.elbo + log_hyperprior(model))
            sufficient = sufficient & ((k > 0) | (minoriser <= bound) | (bound == jnp.inf))
            better = info.elbo > top
            best = jax.tree.map(lambda a, b: jnp.where(better, a, b), q, best)
            top = jnp.where(better, info.elbo, top)
            return new, state, k + 1, info.elbo, jnp.abs(info.elbo - last), (best, top), sufficient

        inf = jnp.asarray(jnp.inf, theta.dtype)
        start = (q, state, jnp.asarray(0), -inf, inf, (q, -inf), jnp.asarray(True))
        _, _, k, _, _, (best, _), sufficient = jax.lax.while_loop(running, body, start)
        return best, jnp.minimum(k, max_inner), sufficient

    def iterate(c: _Carry) -> _Carry:
        """Re-solve `q` at the candidate; if the minoriser fell short of the sufficient
        increase, halve the step (a backtracking line search, 30 halvings at most, then stay);
        else accept the candidate if `F` did not fall and take the next L-BFGS direction."""
        d, alpha, slope = c.search
        bound = c.best[2] + 1e-4 * alpha * slope
        bound = jnp.where(alpha > 0, bound, jnp.inf)  # no step: nothing to check
        enough = fraction * jnp.where(jnp.isfinite(c.change), c.change, 0)
        q, inner, sufficient = resolve(c.theta, c.q, enough, bound)

        def evaluate(q):
            (value, kl), grad = jax.value_and_grad(negative_objective, has_aux=True)(c.theta, q)
            return value, grad, kl

        value, grad, kl = jax.lax.cond(sufficient, evaluate, lambda q: c.best[2:], q)
        change = c.best[2] - value  # the increase of F (inf at the start)
        scale = 1.0 + jnp.abs(value)
        small = (jnp.max(jnp.abs(grad)) <= gtol * scale) & (jnp.abs(change) <= ftol * scale)
        finite = _all_finite((q, value, grad))
        # A candidate where the re-solve or the gradient is NaN/inf (the line search only saw
        # a finite minoriser) is rejected and the step towards it halved, up to 30 times (at
        # the accepted point itself there is no step to halve).
        retry = ~finite & (c.halvings < 30) & (alpha > 0)
        outcome = Outcome.where(
            ~sufficient | (~finite & retry),
            c.outcome,
            Outcome.where(
                ~finite,
                Outcome.failed,
                Outcome.where(
                    small, Outcome.converged, Outcome.where(change <= 0, Outcome.stalled, c.outcome)
                ),
            ),
        )
        accept = sufficient & finite & (change >= 0)
        memory = _remember(c.memory, c.theta - c.best[0], grad - c.best[3])
        memory = jax.tree.map(lambda new, old: jnp.where(accept, new, old), memory, c.memory)
        best = jax.tree.map(
            lambda new, old: jnp.where(accept, new, old), (c.theta, q, value, grad, kl), c.best
        )
        halved = jnp.where(c.halvings < 30, 0.5 * alpha, 0.0)  # 30 halvings: stay at `best`
        search = jax.tree.map(
            lambda new, old: jnp.where(accept, new, old),
            line_search_start(memory, best[3], MAX_LOG_STEP),
            (d, halved, slope),
        )
        return _Carry(
            best[0] + search[1] * search[0], best[1], memory, best, search,
            jnp.where(accept, change, c.change), c.step + sufficient,
            c.inner_steps + jnp.where(sufficient, inner, 0),
            jnp.where(accept, 0, c.halvings + 1), outcome,
        )  # fmt: skip

    inf = jnp.asarray(jnp.inf, theta.dtype)
    zeros = jnp.zeros_like(theta)
    start = _Carry(
        theta, q, empty_memory(memory_size, theta.shape[0], theta.dtype),
        (theta, q, inf, zeros, jnp.zeros((), theta.dtype)), (zeros, jnp.zeros_like(inf), inf),
        inf, jnp.asarray(-1), jnp.asarray(0), jnp.asarray(0), Outcome.max_steps,
    )  # fmt: skip

    def running(c: _Carry):
        # `step` counts L-BFGS steps: the first iteration only solves `q` at the start.
        return (c.outcome == Outcome.max_steps) & (c.step < max_steps)

    c = jax.lax.while_loop(running, iterate, start)
    theta, q, value, grad, kl = c.best
    model = model_at(theta)
    return HyperparameterResult(
        model, q, -value - log_hyperprior(model), jnp.max(jnp.abs(grad)), c.change,
        jnp.maximum(c.step, 0), c.inner_steps, c.outcome, kl,
    )  # fmt: skip
