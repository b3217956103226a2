"""Shared problems with known answers."""

import numpy as np

import ngvi


def tutorial_data():
    """The public tutorial's 30-point problem (see `ngvi.datasets.tutorial`)."""
    return ngvi.datasets.tutorial()


def tutorial_model(likelihood=None):
    X, y = tutorial_data()
    kernel = ngvi.kernels.SquaredExponential(variance=1.5, lengthscale=1.0)
    prior = ngvi.GPPrior(kernel, jitter=1e-6)
    return ngvi.Model(prior, likelihood or ngvi.likelihoods.Probit(), X, y)


def banana(n=None):
    """The 400-point banana classification set bundled with the package."""
    X, y = ngvi.datasets.banana()
    return (X, y) if n is None else (X[:n], y[:n])


def student_t_outliers_model(df=4.0, scale=0.1):
    """GP regression with a Student-t likelihood: `sin(2x)` + N(0, 0.1^2) noise on 40 points,
    with three gross outliers (+4, -5, +3.5 at indices 5, 17, 30). The likelihood is not
    log-concave, so `E_q[H]` is positive at the outliers."""
    rng = np.random.default_rng(0)
    X = np.linspace(-3.0, 3.0, 40)
    y = np.sin(2.0 * X) + 0.1 * rng.standard_normal(40)
    y[[5, 17, 30]] += np.array([4.0, -5.0, 3.5])
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=1.0)
    likelihood = ngvi.likelihoods.StudentT(df=df, scale=scale)
    return ngvi.Model(ngvi.GPPrior(kernel), likelihood, X, y)


def numpy_kl(m, S, m0, S0):
    """KL(N(m, S) || N(m0, S0)) by the textbook formula with explicit inverses (tests only)."""
    S0inv = np.linalg.inv(S0)
    d = m - m0
    return 0.5 * (
        np.trace(S0inv @ S)
        + d @ S0inv @ d
        - len(m)
        + np.linalg.slogdet(S0)[1]
        - np.linalg.slogdet(S)[1]
    )


def count_fit_step_traces(strategy, models, num_steps=3):
    """Fit each model with `strategy` (new strategy API: `step(model, q, state, batch,
    step_count, key)`) and return how many times its `step` was traced.

    The counter is a Python side effect in a wrapper's `step`, so it runs only while JAX
    traces; a strategy that compiles once traces once however many same-shaped fits it runs.
    The wrapper forwards `form`, `init`, `terminate` and `smoothing` to the strategy.
    """
    counter = {"traces": 0}
    inner_form = strategy.form

    class TraceCounting(ngvi.AbstractOptimizer):
        inner: ngvi.AbstractOptimizer
        form = inner_form

        @property
        def smoothing(self):
            return self.inner.smoothing

        def init(self, model, q):
            return self.inner.init(model, q)

        def step(self, model, q, state, batch, step_count, key):
            counter["traces"] += 1
            return self.inner.step(model, q, state, batch, step_count, key)

        def terminate(self, history, t, tol):
            return self.inner.terminate(history, t, tol)

    wrapped = TraceCounting(strategy)
    for model in models:
        ngvi.fit(model, wrapped, num_steps=num_steps, tol=0.0, progress=False)
    return counter["traces"]
