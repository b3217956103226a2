"""`ngvi.fit`: the compiled loop, its history, outcomes, failure handling and compilation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tutorial_model

import ngvi


def assert_params_equal(q1, q2, **kwargs):
    for a, b in zip(q1.parameters, q2.parameters, strict=True):
        np.testing.assert_allclose(a, b, **kwargs)


class FailAt(ngvi.AbstractOptimizer):
    """Natural gradient that, at step `fail_at`, returns `value` as its site parameters."""

    inner: ngvi.NaturalGradient
    fail_at: int
    value: float

    def init(self, model, q):
        return self.inner.init(model, q)

    def step(self, model, q, state, step_count, key):
        new_q, state, info = self.inner.step(model, q, state, step_count, key)
        bad = step_count == self.fail_at
        parameters = jax.tree.map(lambda p: jnp.where(bad, self.value, p), new_q.parameters)
        return new_q.with_parameters(parameters), state, info


TRACES = []


class CountingNaturalGradient(ngvi.AbstractOptimizer):
    """Natural gradient that records each time its `step` is traced."""

    inner: ngvi.NaturalGradient

    def init(self, model, q):
        return self.inner.init(model, q)

    def step(self, model, q, state, step_count, key):
        TRACES.append(1)
        return self.inner.step(model, q, state, step_count, key)


@pytest.fixture(scope="module")
def model():
    return tutorial_model()


@pytest.fixture(scope="module")
def result(model):
    return ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=20, progress=False)


def test_history_and_result_agree(model, result):
    assert result.num_steps <= 20
    for field in ("elbo", "step_size", "num_backoffs", "min_precision"):
        assert getattr(result.history, field).shape == (result.num_steps,)
    assert float(result.history.elbo[-1]) == float(result.elbo)
    np.testing.assert_allclose(result.elbo, model.elbo(result.q), rtol=1e-14)
    np.testing.assert_allclose(
        result.initial_elbo, model.elbo(model.init_variational()), rtol=1e-14
    )
    np.testing.assert_array_equal(result.history.step_size, 1.0)
    np.testing.assert_array_equal(result.history.num_backoffs, 0)
    assert np.all(np.isfinite(result.history.elbo))
    assert np.all(np.asarray(result.history.min_precision) > 0)
    assert result.diagnostics["num_steps"] == result.num_steps
    assert result.diagnostics["total_backoffs"] == 0


def test_history_length_equals_num_steps_without_early_stopping(model):
    result = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=7, tol=0.0, progress=False)
    assert result.num_steps == 7
    assert result.history.elbo.shape == (7,)
    assert result.outcome == ngvi.FitOutcome.max_steps
    np.testing.assert_allclose(result.elbo, model.elbo(result.q), rtol=1e-14)


def test_fit_matches_a_python_loop_of_steps(model):
    """The compiled loop does exactly `num_steps` strategy steps; history entry t is the ELBO
    of the posterior after step t + 1."""
    optimizer = ngvi.NaturalGradient(lr=0.7)
    result = ngvi.fit(model, optimizer, num_steps=5, tol=0.0, progress=False)
    q = model.init_variational()
    state = optimizer.init(model, q)
    elbos = []
    step = eqx.filter_jit(optimizer.step)
    for t in range(5):
        q, state, _ = step(model, q, state, jnp.asarray(t), jax.random.PRNGKey(t))
        elbos.append(float(model.elbo(q)))
    assert_params_equal(result.q, q, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.history.elbo, elbos, rtol=1e-12)


def test_outcomes(model, result):
    assert result.outcome == ngvi.FitOutcome.converged
    assert result.converged
    assert "tolerance" in result.message
    short = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=2, progress=False)
    assert short.outcome == ngvi.FitOutcome.max_steps
    assert not short.converged
    assert short.num_steps == 2


def test_zero_and_negative_steps(model):
    result = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=0, progress=False)
    assert result.num_steps == 0 and result.history.elbo.shape == (0,)
    assert_params_equal(result.q, model.init_variational(), rtol=0)
    np.testing.assert_allclose(result.elbo, result.initial_elbo, rtol=1e-14)
    with pytest.raises(ValueError, match="non-negative"):
        ngvi.fit(model, ngvi.NaturalGradient(), num_steps=-1)


def test_elbo_non_decreasing(result):
    elbos = np.concatenate([[float(result.initial_elbo)], np.asarray(result.history.elbo)])
    assert np.all(np.diff(elbos) >= -1e-10), np.diff(elbos)


def test_warm_start_converges_immediately(model, result):
    again = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=20, q=result.q, progress=False)
    assert again.outcome == ngvi.FitOutcome.converged
    assert again.num_steps <= 2
    np.testing.assert_allclose(again.initial_elbo, result.elbo, rtol=1e-14)
    np.testing.assert_allclose(again.elbo, result.elbo, rtol=1e-9)


def test_optax_schedule_as_step_size(model, result):
    schedule = optax.linear_schedule(init_value=0.2, end_value=1.0, transition_steps=4)
    fitted = ngvi.fit(model, ngvi.NaturalGradient(lr=schedule), num_steps=40, progress=False)
    assert fitted.converged
    want = np.array([float(schedule(t)) for t in range(fitted.num_steps)])
    np.testing.assert_allclose(fitted.history.step_size, want, rtol=1e-12)
    assert fitted.history.step_size[0] == pytest.approx(0.2)
    np.testing.assert_allclose(fitted.elbo, result.elbo, rtol=1e-8)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_step_fails_and_keeps_last_finite_posterior(model, value):
    good = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=3, tol=0.0, progress=False)
    bad = FailAt(ngvi.NaturalGradient(), fail_at=3, value=value)
    result = ngvi.fit(model, bad, num_steps=20, tol=0.0, progress=False, throw=False)
    assert result.outcome == ngvi.FitOutcome.failed
    assert "NaN" in result.message
    assert result.num_steps == 3
    assert_params_equal(result.q, good.q, rtol=0)
    assert np.isfinite(float(result.elbo))
    np.testing.assert_array_equal(result.history.elbo, good.history.elbo)
    with pytest.raises(RuntimeError, match="NaN/inf"):
        ngvi.fit(model, bad, num_steps=20, tol=0.0, progress=False, throw=True)


def test_finite_step_with_non_finite_elbo_falls_back(model):
    """A step returning finite sites whose ELBO is not finite (rate exp(huge) in a Poisson
    model) is detected at the next step, and the posterior before it is kept."""
    X = np.asarray(model.X)
    counts = np.arange(30) % 4
    poisson = ngvi.Model(model.prior, ngvi.likelihoods.Poisson(), X, counts)
    good = ngvi.fit(poisson, ngvi.NaturalGradient(), num_steps=3, tol=0.0, progress=False)
    bad = FailAt(ngvi.NaturalGradient(), fail_at=3, value=1e3)
    result = ngvi.fit(poisson, bad, num_steps=20, tol=0.0, progress=False, throw=False)
    assert result.outcome == ngvi.FitOutcome.failed
    assert result.num_steps == 3
    assert_params_equal(result.q, good.q, rtol=0)
    assert np.isfinite(float(result.elbo))


def test_step_compiles_once_per_problem_shape(model):
    optimizer = CountingNaturalGradient(ngvi.NaturalGradient(lr=1.0))
    TRACES.clear()
    first = ngvi.fit(model, optimizer, num_steps=20, progress=False)
    assert len(TRACES) == 1
    # same shapes, different data: no retrace
    other = ngvi.Model(
        model.prior, ngvi.likelihoods.Probit(), np.asarray(model.X) * 0.9, 1 - np.asarray(model.y)
    )
    second = ngvi.fit(other, optimizer, num_steps=20, progress=False)
    ngvi.fit(model, optimizer, num_steps=20, q=first.q, progress=False)
    assert len(TRACES) == 1
    assert float(second.elbo) != float(first.elbo)
    # the progress bar's chunking does not retrace either
    chunked = ngvi.fit(model, optimizer, num_steps=20, tol=0.0, progress=True)
    assert chunked.num_steps == 20
    assert len(TRACES) == 1  # the chunk boundary is a traced value


@eqx.debug.assert_max_traces(max_traces=1)
def _traced_step(inner, model, q, state, step_count, key):
    return inner.step(model, q, state, step_count, key)


class Traced(ngvi.AbstractOptimizer):
    inner: ngvi.NaturalGradient

    def init(self, model, q):
        return None

    def step(self, model, q, state, step_count, key):
        return _traced_step(self.inner, model, q, state, step_count, key)


def test_assert_max_traces(model):
    """The same check with equinox's trace counter around the strategy step."""
    optimizer = Traced(ngvi.NaturalGradient())
    ngvi.fit(model, optimizer, num_steps=5, tol=0.0, progress=False)
    ngvi.fit(model, optimizer, num_steps=5, tol=0.0, progress=False)
    with pytest.raises(RuntimeError, match="traced"):  # the counter is live
        _traced_step(
            ngvi.NaturalGradient(),
            model,
            model.init_variational(),
            None,
            jnp.asarray(0),
            jax.random.PRNGKey(0),
        )
