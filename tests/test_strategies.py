"""Every strategy on every problem it supports, against independently established optima
(`tests/problems.py`), and a model defined here, outside the library, that every strategy fits.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from problems import PROBLEMS, STRATEGIES, reference_laplace, reference_optimum

import ngvi
from ngvi.families import JointView, RowsView

CASES = [
    (strategy, problem) for strategy, (*_, problems) in STRATEGIES.items() for problem in problems
]


@pytest.mark.parametrize(("strategy_name", "problem_name"), CASES)
def test_strategy_reaches_the_independent_optimum(strategy_name, problem_name):
    strategy, family, steps, tolerance, _ = STRATEGIES[strategy_name]
    problem = PROBLEMS[problem_name]
    model = problem.model(family)
    result = ngvi.fit(model, strategy, steps, progress=False)
    optimum = reference_optimum(problem, family)
    gap = optimum - float(result.elbo)
    # The reference is an optimum: nothing may beat it by more than its own accuracy.
    assert gap > -1e-7, f"{strategy_name} beat the reference optimum by {-gap:.2e} nats"
    assert gap < tolerance, f"{strategy_name} ended {gap:.2e} nats below the optimum"


@pytest.mark.parametrize("problem_name", ["tutorial-probit", "linear-logit", "linear-poisson"])
def test_newton_at_the_mean_reaches_the_laplace_approximation(problem_name):
    problem = PROBLEMS[problem_name]
    model = problem.model()
    result = ngvi.fit(model, ngvi.BLR(lr=1.0, delta=True), 100, progress=False)
    mode, covariance = reference_laplace(problem)
    mean, fitted_covariance = model.posterior(result.q)
    np.testing.assert_allclose(mean[0], mode, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fitted_covariance[0], covariance, rtol=1e-5, atol=1e-9)
    # The Laplace point is not the variational optimum.
    assert float(result.elbo) < reference_optimum(problem) - 1e-4


class FeatureModel(ngvi.AbstractModel):
    """A model the library does not know: `f(x) = b + w * sin(x)` with independent standard
    normal `b`, `w` (two whitened coordinates), written only against the model protocol."""

    likelihood: ngvi.likelihoods.AbstractLikelihood
    data: ngvi.Data
    family: str = eqx.field(static=True, default="full")

    def _view(self, X):
        features = jnp.concatenate([jnp.ones_like(X), jnp.sin(X)], axis=1)
        return RowsView(jnp.zeros(X.shape[0]), features, jnp.zeros(X.shape[0]))

    def whitened_view(self, batch):
        return self._view((self.data if batch is None else batch).X)

    def whitened_view_at(self, X_new):
        return self._view(X_new)

    def latent_coordinates(self):
        return JointView(jnp.zeros(2), jnp.eye(2))

    def num_coordinates(self):
        return 2


def _feature_model():
    X = np.linspace(-3, 3, 30)
    y = (0.5 + 2.0 * np.sin(X) + 0.3 * np.cos(5 * X) > 0).astype(float)
    data = ngvi.Data(jnp.asarray(X)[:, None], jnp.asarray(y))
    return FeatureModel(ngvi.likelihoods.BernoulliLogit(), data)


@pytest.mark.parametrize(
    "strategy",
    [
        ngvi.NaturalGradient(lr=1.0),
        ngvi.GaussNewton(lr=1.0),
        ngvi.Adam(lr=0.05),
        ngvi.BLR(lr=STRATEGIES["blr"][0].lr, num_samples=32),
    ],
    ids=["natgrad", "gauss-newton", "adam", "blr"],
)
def test_every_strategy_fits_a_model_defined_outside_the_library(strategy):
    """The same optimum as a linear model on the features, fitted by natural gradients."""
    model = _feature_model()
    X = np.asarray(model.data.X[:, 0])
    features = np.stack([np.ones_like(X), np.sin(X)], axis=1)
    linear = ngvi.Model(
        ngvi.GaussianPrior(jnp.zeros(2), 1.0), model.likelihood, features, model.data.y
    )
    reference = ngvi.fit(linear, ngvi.NaturalGradient(), 100, progress=False)
    steps = 3000 if isinstance(strategy, ngvi.Adam) else 300
    result = ngvi.fit(model, strategy, steps, progress=False)
    tolerance = 2e-3 if isinstance(strategy, ngvi.BLR) else 1e-4
    assert abs(float(result.elbo) - float(reference.elbo)) < tolerance
    prediction = ngvi.predict(model, result.q, np.array([0.0, 1.0]))
    assert prediction.mean.shape == (2,)
