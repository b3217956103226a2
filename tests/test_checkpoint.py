"""`fit(..., checkpoint=path)`: a fit killed at any point and run again reaches the posterior
of an uninterrupted fit, bitwise; a checkpoint of another fit is refused."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import equinox as eqx
import jax
import optax
import pytest
from helpers import tutorial_model

import ngvi


def _same(a, b) -> bool:
    return bool(eqx.tree_equal((a.q, a.model, a.history), (b.q, b.model, b.history)))


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_resume_is_bitwise_with_learned_hyperparameters(tmp_path):
    model, learn = tutorial_model(), ngvi.LearnHyperparameters(optax.adam(0.05))
    kwargs = dict(learn=learn, progress=False, tol=0.0)
    reference = ngvi.fit(model, ngvi.NaturalGradient(), 40, **kwargs)
    path = tmp_path / "fit.ckpt"
    first = ngvi.fit(
        model, ngvi.NaturalGradient(), 17, checkpoint=path, checkpoint_every=5, **kwargs
    )
    assert first.num_steps == 17
    resumed = ngvi.fit(
        model, ngvi.NaturalGradient(), 40, checkpoint=path, checkpoint_every=5, **kwargs
    )
    assert resumed.num_steps == 40 and _same(resumed, reference)
    again = ngvi.fit(model, ngvi.NaturalGradient(), 40, checkpoint=path, **kwargs)  # ended: as is
    assert _same(again, reference)


def test_resume_keeps_the_minibatches_and_monte_carlo_draws(tmp_path):
    X, y = ngvi.datasets.banana()
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=0.8)
    model = ngvi.SparseModel(ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X, y, inducing=8)
    kwargs = dict(batch_size=32, key=jax.random.PRNGKey(3), progress=False, tol=0.0)
    strategy = ngvi.BLR(lr=0.1, num_samples=4)
    reference = ngvi.fit(model, strategy, 30, **kwargs)
    path = tmp_path / "sparse.ckpt"
    ngvi.fit(model, strategy, 11, checkpoint=path, checkpoint_every=4, **kwargs)
    resumed = ngvi.fit(model, strategy, 30, checkpoint=path, checkpoint_every=4, **kwargs)
    assert _same(resumed, reference)


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_a_checkpoint_of_another_fit_is_refused(tmp_path):
    model = tutorial_model()
    path = tmp_path / "fit.ckpt"
    ngvi.fit(model, ngvi.NaturalGradient(), 5, checkpoint=path, progress=False, tol=0.0)
    with pytest.raises(ngvi.LoadError, match="a different fit: the strategy differs"):
        ngvi.fit(model, ngvi.NaturalGradient(lr=0.5), 5, checkpoint=path, progress=False, tol=0.0)
    smaller = ngvi.Model(model.prior, model.likelihood, model.X[:20], model.y[:20])
    with pytest.raises(ngvi.LoadError, match="model .* differs .*20 points.*30 points"):
        ngvi.fit(smaller, ngvi.NaturalGradient(), 5, checkpoint=path, progress=False, tol=0.0)
    with pytest.raises(ngvi.LoadError, match="beyond `num_steps=3`"):
        ngvi.fit(model, ngvi.NaturalGradient(), 3, checkpoint=path, progress=False, tol=0.0)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ngvi.LoadError, match="truncated"):
        ngvi.fit(model, ngvi.NaturalGradient(), 5, checkpoint=path, progress=False, tol=0.0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        ngvi.fit(model, ngvi.NaturalGradient(), 5, checkpoint=path, checkpoint_every=0)


SCRIPT = """
import sys, jax, optax
jax.config.update("jax_enable_x64", True)
import ngvi
X, y = ngvi.datasets.banana()
kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=0.8)
model = ngvi.Model(ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X[:60], y[:60])
learn = ngvi.LearnHyperparameters(optax.adam(0.01))
checkpoint = sys.argv[1] if len(sys.argv) > 1 else None
result = ngvi.fit(model, ngvi.NaturalGradient(lr=0.5), {steps}, learn=learn, tol=0.0,
                  progress=False, checkpoint=checkpoint, checkpoint_every=25)
"""


def test_a_float64_checkpoint_resumed_in_float32_names_the_dtype(tmp_path):
    """Reproducer: it said "the model (its class, data or hyperparameters) differs"."""
    path = tmp_path / "fit.ckpt"
    ngvi.fit(tutorial_model(), ngvi.NaturalGradient(), 2, checkpoint=path, progress=False)
    with jax.enable_x64(False):
        with pytest.raises(ngvi.LoadError, match="holds a float64 fit .* float32 .*x64"):
            ngvi.fit(tutorial_model(), ngvi.NaturalGradient(), 4, checkpoint=path, progress=False)


def test_what_functions_close_over_is_part_of_the_fingerprint(tmp_path):
    """Reproducers: functions were compared by name only, so a `ParametricModel` whose
    log-likelihood closes over other labels, and an optax learner or schedule with another
    learning rate, resumed a checkpoint and returned a posterior of neither fit."""
    import jax.numpy as jnp
    import numpy as np

    X = jnp.asarray(np.random.default_rng(0).normal(size=(50, 2)))

    def logistic(labels):
        def log_likelihood(w):
            f = X @ w
            return jnp.sum(labels * jax.nn.log_sigmoid(f) + (1 - labels) * jax.nn.log_sigmoid(-f))

        return log_likelihood

    labels = (X[:, 0] > 0) * 1.0
    prior = ngvi.GaussianPrior(jnp.zeros(2), jnp.eye(2))
    kwargs = dict(progress=False, tol=0.0)
    path = tmp_path / "parametric.ckpt"
    ngvi.fit(
        ngvi.ParametricModel(prior, logistic(labels)), ngvi.BLR(), 3, checkpoint=path, **kwargs
    )
    with pytest.raises(ngvi.LoadError, match="the model .* differs"):
        model = ngvi.ParametricModel(prior, logistic(1 - labels))
        ngvi.fit(model, ngvi.BLR(), 6, checkpoint=path, **kwargs)


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_an_optax_learning_rate_is_part_of_the_fingerprint(tmp_path):
    """The optax half of the reproducer above: a learner and a schedule with another
    learning rate resumed, and the result matched neither configuration."""
    kwargs = dict(progress=False, tol=0.0)
    model = tutorial_model()
    path = tmp_path / "learn.ckpt"
    learn = ngvi.LearnHyperparameters(optax.adam(1e-2))
    ngvi.fit(model, ngvi.NaturalGradient(), 3, learn=learn, checkpoint=path, **kwargs)
    with pytest.raises(ngvi.LoadError, match="differs"):
        faster = ngvi.LearnHyperparameters(optax.adam(1e-1))
        ngvi.fit(model, ngvi.NaturalGradient(), 6, learn=faster, checkpoint=path, **kwargs)
    path = tmp_path / "schedule.ckpt"
    schedule = optax.linear_schedule(1.0, 0.1, 20)
    ngvi.fit(model, ngvi.NaturalGradient(lr=schedule), 3, checkpoint=path, **kwargs)
    with pytest.raises(ngvi.LoadError, match="the strategy differs"):
        other = ngvi.NaturalGradient(lr=optax.linear_schedule(0.2, 0.1, 20))
        ngvi.fit(model, other, 6, checkpoint=path, **kwargs)


@pytest.mark.slow
def test_sigkill_mid_fit_then_resume_matches_an_uninterrupted_fit(tmp_path):
    steps = 1000
    script = textwrap.dedent(SCRIPT.format(steps=steps))
    path = tmp_path / "fit.ckpt"
    process = subprocess.Popen([sys.executable, "-c", script, str(path)])
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if path.exists() and read_header(path)["step"] >= 100:
                break  # a few checkpoints in: kill it mid-run
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        process.kill()
    killed_at = int(read_header(path)["step"])
    assert 0 < killed_at < steps and killed_at % 25 == 0
    # A kill during a write may leave its temporary file (nothing can remove it then); the
    # resuming run does. (Asserting none right after the kill failed when it landed mid-write.)
    (tmp_path / ".fit.ckpt.killed.tmp").write_bytes(b"partial")  # as such a kill leaves it
    namespace: dict = {}
    exec(script.replace("sys.argv[1] if len(sys.argv) > 1 else None", repr(str(path))), namespace)
    resumed = namespace["result"]
    assert not [p for p in os.listdir(tmp_path) if p != "fit.ckpt"]  # no temporary file left
    exec(script.replace("sys.argv[1] if len(sys.argv) > 1 else None", "None"), namespace)
    assert resumed.num_steps == steps and _same(resumed, namespace["result"])


def read_header(path):
    import json

    return json.loads(path.read_bytes().split(b"\n")[1])
