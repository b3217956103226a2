"""Fault injection: every way a fit can go wrong ends in its documented outcome, with the last
valid (finite) posterior, never a NaN posterior reported as a result.

One test per failure path that `tests/test_fit.py` does not already cover with a real fault:

- NaN from a user's `log_prob` partway through a fit (`failed`);
- a Cholesky failure when learned hyperparameters leave the kernel's valid region (`failed`);
- a step-size schedule that reaches 0, for every strategy (`schedule_ended`; `test_fit.py`
  checks `NaturalGradient` in detail);
- Ctrl-C inside the chunked loop (`interrupted`);
- a user's `log_prob` whose derivatives are NaN where its value is finite (`failed`, and the
  message names the points), and `fit_hyperparameters` from a start whose ELBO is `-inf`.

`stalled` (no valid step size) is `tests/test_safeguards.py::test_student_t_backoff_fires`.

The truth each test compares against is the same fit stopped, without the fault, at the step
the fault was caught: the reported `q` must be that one, bit for bit.
"""

import importlib
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tutorial_data, tutorial_model

import ngvi

fit_module = importlib.import_module("ngvi.fitting.fit")  # `ngvi.fitting.fit` is the function


def assert_same_q(q1, q2):
    for a, b in zip(q1.parameters, q2.parameters, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def assert_valid_result(model, result):
    """A reported result is finite everywhere a user looks: q, ELBO, history, predictions."""
    for array in result.q.parameters:
        assert np.all(np.isfinite(np.asarray(array)))
    assert np.isfinite(float(result.elbo))
    assert np.all(np.isfinite(np.asarray(result.history.elbo)))
    assert float(result.elbo) == pytest.approx(float(result.model.elbo(result.q)), rel=1e-12)
    if model.X.shape[1]:
        prediction = ngvi.predict(result.model, result.q, np.asarray(model.X)[:5])
        assert np.all(np.isfinite(np.asarray(prediction.latent_mean)))
        assert np.all(np.isfinite(np.asarray(prediction.latent_variance)))


def quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ngvi.fit(*args, progress=False, **kwargs)


class Fragile(ngvi.likelihoods.AbstractLikelihood):
    """A Gaussian log-density (noise 0.1) with a user's bug: NaN above `f = threshold`."""

    threshold: float = 2.5

    def log_prob(self, f, y):
        value = -0.5 * (jnp.log(2 * jnp.pi * 0.1) + (y - f) ** 2 / 0.1)
        return jnp.where(f > self.threshold, jnp.nan, value)


def test_nan_from_log_prob_mid_fit_keeps_the_last_finite_posterior():
    # Targets at 3 pull the posterior mean up; once the quadrature nodes of a marginal pass
    # 2.5, E_q[log p] is NaN. At the prior (sd 0.3) no node is near it.
    X = np.linspace(-3.0, 3.0, 20)
    kernel = ngvi.kernels.SquaredExponential(variance=0.09, lengthscale=0.3)
    likelihood = Fragile(num_quadrature_points=10)
    model = ngvi.Model(ngvi.GPPrior(kernel), likelihood, X, np.full(20, 3.0))
    strategy = ngvi.NaturalGradient(lr=0.1)
    with pytest.warns(UserWarning, match="failed after"):
        result = ngvi.fit(model, strategy, 50, tol=0.0, progress=False, throw=False)
    assert result.outcome == ngvi.FitOutcome.failed
    assert 0 < result.num_steps < 50  # mid-fit, not at the start
    assert_valid_result(model, result)
    clean = ngvi.fit(model, strategy, result.num_steps, tol=0.0, progress=False)
    assert_same_q(result.q, clean.q)
    np.testing.assert_array_equal(result.history.elbo, clean.history.elbo)
    # The next step's q really is the broken one: the fault was caught, not avoided.
    one_more = ngvi.fit(model, strategy, 1, tol=0.0, q=clean.q, progress=False)
    assert not np.isfinite(float(model.elbo(one_more.q)))
    with pytest.raises(RuntimeError, match="NaN/inf"):
        ngvi.fit(model, strategy, 50, tol=0.0, progress=False)


class Breaking(ngvi.kernels.AbstractKernel):
    """A squared-exponential kernel, valid while `drift <= 1`; above that the user's formula
    subtracts 5 from the diagonal, so `K` is far from positive definite."""

    drift: jax.Array = ngvi.learnable()

    def evaluate(self, x1, x2):
        se = jnp.exp(-0.5 * jnp.sum((x1 - x2) ** 2))
        return se - jnp.where(self.drift > 1.0, 5.0, 0.0) * jnp.all(x1 == x2)


def drift_by(rate):
    """An optax transformation that moves every learned leaf by `rate` per step."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u: jnp.full_like(u, rate), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def test_cholesky_failure_from_learned_hyperparameters_keeps_the_last_valid_pair():
    X, y = tutorial_data()
    model = ngvi.Model(ngvi.GPPrior(Breaking(jnp.asarray(0.0))), ngvi.likelihoods.Probit(), X, y)
    learn = ngvi.LearnHyperparameters(drift_by(0.25))
    # Step k leaves drift = 0.25 (k + 1): the 5th step makes K indefinite, and the 6th
    # step's Cholesky of B = I + W^1/2 K W^1/2 fails.
    result = quiet_fit(model, ngvi.NaturalGradient(), 30, tol=0.0, learn=learn, throw=False)
    assert result.outcome == ngvi.FitOutcome.failed
    assert result.num_steps == 4
    assert float(result.model.prior.kernel.drift) == pytest.approx(1.0)  # still valid
    assert_valid_result(model, result)
    clean = ngvi.fit(model, ngvi.NaturalGradient(), 4, tol=0.0, learn=learn, progress=False)
    assert_same_q(result.q, clean.q)
    # (The message describes the kept, valid pair, so it cannot name the broken kernel yet.)
    with pytest.raises(RuntimeError, match="NaN/inf"):
        ngvi.fit(model, ngvi.NaturalGradient(), 30, tol=0.0, learn=learn, progress=False)


@pytest.mark.parametrize(
    "make",
    [
        lambda lr: ngvi.GaussNewton(lr=lr),
        lambda lr: ngvi.BLR(lr=lr, num_samples=4),
        lambda lr: ngvi.Adam(lr=lr),
    ],
    ids=["GaussNewton", "BLR", "Adam"],
)
def test_schedule_that_reaches_zero_ends_every_strategy(make):
    model = tutorial_model()
    schedule = optax.linear_schedule(init_value=0.5, end_value=0.0, transition_steps=5)
    strategy = make(schedule)
    key = jax.random.PRNGKey(1)
    with pytest.warns(UserWarning, match="schedule"):
        result = ngvi.fit(model, strategy, 50, key=key, progress=False)
    assert result.outcome == ngvi.FitOutcome.schedule_ended
    assert not result.converged
    assert result.num_steps == 6  # the step at t = 5 asked for 0 and changed nothing
    assert_valid_result(model, result)
    five = ngvi.fit(model, strategy, 5, tol=0.0, key=key, progress=False)
    # optax evaluates Adam's schedule at an int32 count in float32: its "0" is -7e-9, a
    # step of that size; the natural-gradient strategies clamp theirs to 0 exactly.
    np.testing.assert_allclose(
        result.elbo, five.elbo, rtol=1e-12 if "Adam" not in repr(strategy) else 1e-8
    )


def test_interrupt_inside_the_chunk_loop_keeps_the_completed_steps(monkeypatch):
    model = tutorial_model()
    strategy = ngvi.NaturalGradient(lr=0.3)
    calls = []
    run_chunk = fit_module.run_chunk

    def interrupted_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_chunk(*args, **kwargs)

    monkeypatch.setattr(fit_module, "run_chunk", interrupted_second_chunk)
    with pytest.warns(UserWarning, match="interrupted"):
        result = ngvi.fit(model, strategy, 100, progress=False)
    monkeypatch.undo()
    assert len(calls) == 2
    assert result.outcome == ngvi.FitOutcome.interrupted
    assert not result.converged
    assert result.num_steps >= 1  # the first chunk completed
    assert_valid_result(model, result)
    clean = ngvi.fit(model, strategy, result.num_steps, tol=0.0, progress=False)
    assert_same_q(result.q, clean.q)
    # Carrying on from the interrupted posterior reaches the optimum.
    resumed = ngvi.fit(model, strategy, 200, q=result.q, progress=False)
    optimum = ngvi.fit(model, ngvi.NaturalGradient(), 50, progress=False)
    assert resumed.converged
    assert float(resumed.elbo) == pytest.approx(float(optimum.elbo), abs=1e-6)


def test_every_outcome_is_documented_with_what_to_do():
    """docs/optimizers.md has a row per outcome (any added later too), saying what to do."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "optimizers.md").read_text()
    table = page[page.index("| outcome | what it means | what to do |") :]
    lines = [line for line in table.splitlines()[2:] if line.startswith("|")]
    rows = {line.split("|")[1].strip(" `"): line for line in lines}
    names = set(ngvi.FitOutcome._name_to_item)  # eqx.Enumeration's items by name
    assert names >= {"converged", "max_steps", "stalled", "failed", "schedule_ended"}
    assert "interrupted" in names
    for name in names:
        assert name in rows, f"outcome {name!r} is not in the table of docs/optimizers.md"
        assert len(rows[name].split("|")[3].strip()) > 20  # says what to do


class _OrdinalProbit(ngvi.likelihoods.AbstractLikelihood):
    """Three ordered classes with cut points at -0.5 and 0.5, written as a user might: the
    infinite outer cut points make autodiff's derivatives NaN for the outer classes."""

    def log_prob(self, f, y):
        from jax.scipy.stats import norm

        cuts = jnp.array([-jnp.inf, -0.5, 0.5, jnp.inf])
        k = y.astype(int)
        return jnp.log(norm.cdf(cuts[k + 1] - f) - norm.cdf(cuts[k] - f))


def test_a_log_prob_with_nan_derivatives_is_named_as_the_cause():
    # Found by an adversarial probe: the fit said "try a smaller step size", which cannot help.
    X = np.linspace(-3.0, 3.0, 20)
    y = np.digitize(np.sin(X) + np.random.default_rng(0).standard_normal(20), [-0.5, 0.5])
    likelihood = _OrdinalProbit()
    model = ngvi.Model(
        ngvi.GPPrior(ngvi.kernels.SquaredExponential(1.0, 1.0)), likelihood, X, y.astype(float)
    )
    curvature = jax.vmap(jax.grad(jax.grad(likelihood.log_prob)), (None, 0))
    nan_at = np.flatnonzero(np.isnan(np.asarray(curvature(0.0, jnp.asarray(y, float)))))
    assert nan_at.size > 0 and np.isfinite(float(model.elbo(model.init_variational())))
    with pytest.raises(RuntimeError) as raised:
        ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), 10, progress=False)
    message = str(raised.value)
    assert "expected gradient or curvature" in message and "no step size can help" in message
    assert f"not finite at {nan_at.size} data point(s): {nan_at[0]} (y = {y[nan_at[0]]})" in message


def test_fit_hyperparameters_from_a_start_whose_elbo_is_infinite_says_why():
    # Found by an adversarial probe: it said a step produced NaN/inf and that "the last finite
    # hyperparameters were kept", when no finite ones existed; `fit` said why.
    rng = np.random.default_rng(4)
    X = np.sort(rng.uniform(-3.0, 3.0, 50))
    counts = rng.poisson(np.exp(6.0 + np.sin(2.0 * X))).astype(float)  # ~400 to ~3000
    kernel = ngvi.kernels.SquaredExponential(variance=1e6, lengthscale=1.0)
    model = ngvi.Model(ngvi.GPPrior(kernel), ngvi.likelihoods.Poisson(), X, counts)
    assert float(model.elbo(model.init_variational())) == -np.inf  # E[exp f] = exp(5e5)
    with pytest.raises(ValueError, match=r"starting ELBO is -inf.*not finite at 50 data point"):
        ngvi.fit_hyperparameters(model)
