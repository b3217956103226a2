"""Adam: the Euclidean baseline on the whitened family `v = m0 + L0 u`, `q(u) = N(m, S S^T)`.

Truth: dense numpy algebra (`inv`, `slogdet`) for the family's moments, KL and GP predictions,
and the VI optimum from `NaturalGradient` (checked independently by the core tests).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import count_step_traces, tutorial_model

import ngvi


def _random_whitened(getkey, dim=4):
    A = jax.random.normal(getkey(), (dim, dim))
    prior_scale = jnp.linalg.cholesky(A @ A.T + dim * jnp.eye(dim))
    scale = jnp.tril(jax.random.normal(getkey(), (dim, dim))) + 2.0 * jnp.eye(dim)
    return ngvi.WhitenedGaussianVariational(
        jax.random.normal(getkey(), (dim,)),
        prior_scale,
        jax.random.normal(getkey(), (dim,)),
        scale,
    )


def test_whitened_family_moments_and_kl(getkey):
    q = _random_whitened(getkey)
    L0, S = np.asarray(q.prior_scale), np.tril(np.asarray(q.whitened_scale))
    m0, m = np.asarray(q.prior_mean), np.asarray(q.whitened_mean)
    mean, covariance = m0 + L0 @ m, L0 @ S @ S.T @ L0.T
    np.testing.assert_allclose(q.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(q.covariance, covariance, rtol=1e-12)
    np.testing.assert_allclose(q.scale_tril() @ q.scale_tril().T, covariance, rtol=1e-10)
    np.testing.assert_allclose(q.marginals()[1], np.diag(covariance), rtol=1e-12)
    K = L0 @ L0.T
    diff = mean - m0
    kl = 0.5 * (
        np.trace(np.linalg.solve(K, covariance))
        + diff @ np.linalg.solve(K, diff)
        - len(m)
        + np.linalg.slogdet(K)[1]
        - np.linalg.slogdet(covariance)[1]
    )
    assert float(q.kl_to_prior()) == pytest.approx(kl, rel=1e-10)
    design = np.asarray(jax.random.normal(getkey(), (5, 4)))
    f_mean, f_var = q.projected_marginals(jnp.asarray(design))
    np.testing.assert_allclose(f_mean, design @ mean, rtol=1e-10)
    np.testing.assert_allclose(f_var, np.diag(design @ covariance @ design.T), rtol=1e-10)


def test_whitened_gp_prediction(getkey):
    q = _random_whitened(getkey)
    K = np.asarray(q.prior_scale @ q.prior_scale.T)
    cross = np.asarray(jax.random.normal(getkey(), (4, 3)))
    prior_mean_new, prior_var_new = np.ones(3), 50.0 * np.ones(3)
    mean, var = q.predict_latent(jnp.asarray(cross), prior_mean_new, prior_var_new)
    weights = np.linalg.solve(K, cross)  # K^-1 k*
    covariance = np.asarray(q.covariance)
    expected_var = (
        prior_var_new - np.sum(cross * weights, 0) + np.sum(weights * (covariance @ weights), 0)
    )
    np.testing.assert_allclose(mean, prior_mean_new + weights.T @ (q.mean - q.prior_mean))
    np.testing.assert_allclose(var, expected_var, rtol=1e-9)


@pytest.fixture(scope="module")
def tutorial():
    model = tutorial_model()
    optimum = ngvi.fit(model, ngvi.NaturalGradient(), 100, tol=1e-14, progress=False)
    # lr = 0.05 reaches the optimum to ~1e-6 nats in 1000 steps on this problem.
    adam = ngvi.fit(model, ngvi.Adam(lr=0.05), 1000, tol=0.0, progress=False)
    return model, optimum, adam


def test_tutorial_reaches_vi_optimum(tutorial):
    model, optimum, adam = tutorial
    assert optimum.converged
    assert np.all(np.isfinite(adam.history.elbo))
    assert float(adam.elbo) == pytest.approx(float(model.elbo(adam.q)), abs=1e-10)
    gap = float(optimum.elbo - adam.elbo)
    assert -1e-6 < gap < 0.01  # the optimum is the ELBO's maximiser
    assert float(adam.history.elbo[99]) > float(adam.initial_elbo) + 1.0  # it climbs


def test_prediction_matches_natural_gradient(tutorial):
    model, optimum, adam = tutorial
    X_new = jnp.linspace(-4.0, 4.0, 17)
    ours, theirs = ngvi.predict(model, adam.q, X_new), ngvi.predict(model, optimum.q, X_new)
    np.testing.assert_allclose(ours.latent_mean, theirs.latent_mean, atol=1e-2)
    np.testing.assert_allclose(ours.latent_variance, theirs.latent_variance, atol=1e-2)
    np.testing.assert_allclose(ours.probability, theirs.probability, atol=1e-2)


def test_logistic_regression_and_custom_optimizer():
    key_x, key_y = jax.random.split(jax.random.PRNGKey(3))
    X = jnp.concatenate([jnp.ones((60, 1)), jax.random.normal(key_x, (60, 2))], axis=1)
    y = jax.random.bernoulli(key_y, jax.nn.sigmoid(X @ jnp.array([0.5, 2.0, -1.5])))
    prior = ngvi.GaussianPrior(jnp.zeros(3), 2.0 * jnp.eye(3))
    model = ngvi.Model(prior, ngvi.likelihoods.BernoulliLogit(), X, y.astype(float))
    optimum = ngvi.fit(model, ngvi.NaturalGradient(), 100, tol=1e-14, progress=False)
    adam = ngvi.fit(model, ngvi.Adam(lr=0.05), 1000, tol=0.0, progress=False)
    assert isinstance(adam.q, ngvi.WhitenedGaussianVariational)
    assert float(adam.elbo) > float(adam.initial_elbo) + 1.0
    assert -1e-6 < float(optimum.elbo - adam.elbo) < 0.01
    np.testing.assert_allclose(adam.q.mean, optimum.q.mean, atol=0.05)
    sgd = ngvi.fit(model, ngvi.Adam(optimizer=optax.sgd(1e-3)), 50, tol=0.0, progress=False)
    assert np.all(np.diff(np.asarray(sgd.history.elbo)) > 0)  # small steps climb monotonically


def test_rejects_other_families():
    model = tutorial_model()
    with pytest.raises(TypeError, match="Whitened"):
        ngvi.fit(model, ngvi.Adam(), 5, q=model.init_variational(), progress=False)
    with pytest.raises(ValueError, match="lr"):
        ngvi.Adam(lr=-1.0)


def test_adam_compiles_once():
    model = tutorial_model()
    flipped = ngvi.Model(model.prior, model.likelihood, model.X, 1.0 - model.y)
    assert count_step_traces(ngvi.Adam(lr=0.05), [model, model, flipped]) == 1
    custom = ngvi.Adam(optimizer=optax.chain(optax.clip(1.0), optax.adam(1e-2)))
    assert count_step_traces(custom, [model, flipped]) == 1
