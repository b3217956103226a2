"""The coupled family: one C x C site per data point (`Model(..., family="coupled")`).

Independent truths: the exact GP posterior of a Gaussian likelihood on a weighted sum of the
latents (its curvature couples them), written out densely here with `K^-1`; and the binary
logistic model on the difference of two softmax latents, which the coupled family must match
exactly (its optimum is the best Gaussian over both latents), unlike mean field.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngvi
from ngvi.likelihoods import BernoulliLogit, Softmax
from ngvi.likelihoods.multi import AbstractMultiLatentLikelihood

WEIGHTS = np.array([1.0, -0.7])
NOISE = 0.05


class WeightedSum(AbstractMultiLatentLikelihood):
    """`y ~ N(w^T f, s2)`: Gaussian in `f`, with the rank-one curvature `-w w^T / s2`."""

    @property
    def num_latent(self):
        return 2

    def log_prob(self, f, y):
        residual = y - jnp.asarray(f) @ jnp.asarray(WEIGHTS, dtype=jnp.asarray(f).dtype)
        return -0.5 * (jnp.log(2 * jnp.pi * NOISE) + residual**2 / NOISE)


def _weighted_sum_problem():
    rng = np.random.default_rng(3)
    X = np.sort(rng.uniform(-2, 2, 15))
    y = np.sin(2 * X) + 0.2 * rng.normal(size=15)
    kernels = [
        ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=0.8),
        ngvi.kernels.SquaredExponential(variance=0.5, lengthscale=0.3),
    ]
    prior = ngvi.GPPrior(kernels, mean=[0.1, -0.2], jitter=1e-8)
    return prior, X, y, kernels


def _exact_posterior(X, y, kernels):
    """`N(mu, Sigma)` over `[f_1(X); f_2(X)]` and the log marginal likelihood, densely."""
    n = len(X)
    blocks = [np.asarray(k(X[:, None], X[:, None])) + 1e-8 * np.eye(n) for k in kernels]
    prior_cov = np.block([[blocks[0], np.zeros((n, n))], [np.zeros((n, n)), blocks[1]]])
    prior_mean = np.concatenate([np.full(n, 0.1), np.full(n, -0.2)])
    design = np.hstack([WEIGHTS[0] * np.eye(n), WEIGHTS[1] * np.eye(n)])  # y = A f + e
    precision = np.linalg.inv(prior_cov) + design.T @ design / NOISE
    covariance = np.linalg.inv(precision)
    mean = covariance @ (np.linalg.solve(prior_cov, prior_mean) + design.T @ y / NOISE)
    marginal_cov = design @ prior_cov @ design.T + NOISE * np.eye(n)
    residual = y - design @ prior_mean
    _, logdet = np.linalg.slogdet(2 * np.pi * marginal_cov)
    log_ml = -0.5 * (logdet + residual @ np.linalg.solve(marginal_cov, residual))
    return mean, covariance, log_ml


def test_one_natural_step_is_the_exact_coupled_posterior():
    prior, X, y, kernels = _weighted_sum_problem()
    model = ngvi.Model(prior, WeightedSum(num_mc_samples=64), X, y, family="coupled")
    result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=1, progress=False)
    mean, covariance = model.posterior(result.q)
    exact_mean, exact_cov, log_ml = _exact_posterior(X, y, kernels)
    n = len(X)
    np.testing.assert_allclose(np.asarray(mean).reshape(-1), exact_mean, atol=1e-8)
    np.testing.assert_allclose(np.asarray(covariance).reshape(2 * n, 2 * n), exact_cov, atol=1e-8)
    # The ELBO at the exact posterior is the log marginal likelihood; its expected
    # log-likelihood is a Monte Carlo estimate with a stated standard error.
    elbo, error = float(model.elbo(result.q)), float(model.elbo_error(result.q))
    assert 0 < error < 1.0
    assert abs(elbo - log_ml) < 4 * error


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_mean_field_across_latents_cannot_reach_the_coupled_posterior():
    prior, X, y, kernels = _weighted_sum_problem()
    elbos = {}
    for family in ("full", "coupled"):
        model = ngvi.Model(prior, WeightedSum(num_mc_samples=64), X, y, family=family)
        result = ngvi.fit(model, ngvi.NaturalGradient(lr=0.5), num_steps=400, progress=False)
        elbos[family] = float(model.elbo(result.q))
    _, _, log_ml = _exact_posterior(X, y, kernels)
    assert elbos["full"] < log_ml - 1.0  # independent latents miss the coupling
    assert abs(elbos["coupled"] - log_ml) < 1.0


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_two_class_softmax_is_the_logistic_model_on_the_difference():
    """With one kernel `k` shared by both latents, `softmax(f)_1 = sigmoid(f_1 - f_0)` and
    `d = f_1 - f_0 ~ GP(0, 2k)` is independent of `f_0 + f_1`, which the data never see. The
    best Gaussian over both latents is therefore the binary logistic model's optimum for `d`:
    same ELBO, same posterior of `d`. Softmax's expectation is Monte Carlo (4,096 antithetic
    draws), the logistic one quadrature; the tolerance is four standard errors."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-3, 3, (40, 1))
    labels = (np.sin(2 * X[:, 0]) + 0.5 * rng.normal(size=40) > 0).astype(float)
    kernel = ngvi.kernels.SquaredExponential(variance=1.5, lengthscale=1.0)
    twice = ngvi.kernels.SquaredExponential(variance=3.0, lengthscale=1.0)
    softmax = Softmax(2, num_mc_samples=4096)
    coupled = ngvi.Model(ngvi.GPPrior(kernel, jitter=1e-8), softmax, X, labels, family="coupled")
    binary = ngvi.Model(ngvi.GPPrior(twice, jitter=2e-8), BernoulliLogit(), X, labels)
    strategy = ngvi.NaturalGradient(lr=1.0)
    fit_coupled = ngvi.fit(coupled, strategy, num_steps=100, progress=False)
    fit_binary = ngvi.fit(binary, strategy, num_steps=100, progress=False)
    assert fit_coupled.outcome == fit_binary.outcome == ngvi.FitOutcome.converged
    error = float(coupled.elbo_error(fit_coupled.q))
    assert abs(float(coupled.elbo(fit_coupled.q)) - float(binary.elbo(fit_binary.q))) < 4 * error
    mean, covariance = coupled.posterior(fit_coupled.q)
    difference = np.asarray(mean[1] - mean[0])
    n = X.shape[0]
    joint = np.asarray(covariance)
    diff_var = np.diagonal(joint[1, :, 1] + joint[0, :, 0] - joint[0, :, 1] - joint[1, :, 0])
    binary_mean, binary_cov = binary.posterior(fit_binary.q)
    np.testing.assert_allclose(difference, np.asarray(binary_mean[0]), atol=0.05)
    np.testing.assert_allclose(diff_var, np.diagonal(np.asarray(binary_cov[0])), atol=0.05)
    assert difference.shape == (n,)


def test_coupled_predictions_carry_the_cross_latent_covariance():
    """At the training inputs the predictive marginals are the posterior's own blocks (up to
    the jitter, which only the training covariance carries)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(24, 2))
    labels = rng.integers(0, 3, 24)
    model = ngvi.Model(
        ngvi.GPPrior(ngvi.kernels.SquaredExponential(), jitter=1e-12),
        Softmax(3, num_mc_samples=64),
        X,
        labels,
        family="coupled",
    )
    result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=5, progress=False)
    prediction = ngvi.predict(model, result.q, X)
    marginals, _ = model.latent_marginals_and_kl(result.q)
    assert prediction.latent_variance.shape == (24, 3, 3)
    np.testing.assert_allclose(prediction.latent_mean, marginals.mean, atol=1e-8)
    np.testing.assert_allclose(prediction.latent_variance, marginals.variance, atol=1e-6)
    off_diagonal = np.abs(np.asarray(prediction.latent_variance)[:, 0, 1])
    assert off_diagonal.max() > 1e-3  # the latents are correlated under q
    np.testing.assert_allclose(np.sum(prediction.mean, axis=1), 1.0, atol=1e-10)


def test_blr_moves_the_coupled_family_to_the_same_optimum():
    prior, X, y, kernels = _weighted_sum_problem()
    model = ngvi.Model(prior, WeightedSum(num_mc_samples=64), X, y, family="coupled")
    schedule = lambda step: 1.0 / (1.0 + 0.1 * step)  # noqa: E731
    result = ngvi.fit(
        model,
        ngvi.BLR(lr=schedule, num_samples=8),
        num_steps=300,
        key=jax.random.key(0),
        progress=False,
    )
    exact_mean, _, _ = _exact_posterior(X, y, kernels)
    mean, _ = model.posterior(result.q)
    # The curvature is constant, so BLR's noise is only in E[g]: the mean is close, not exact.
    np.testing.assert_allclose(np.asarray(mean).reshape(-1), exact_mean, atol=0.05)


@pytest.mark.parametrize(
    "likelihood, message",
    [
        (BernoulliLogit(), "has one"),
        (ngvi.likelihoods.RobustMax(3), "piecewise constant"),
    ],
)
def test_coupled_family_refuses_what_it_cannot_fit(likelihood, message):
    X, y = np.zeros((4, 1)), np.array([0.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=message):
        ngvi.Model(
            ngvi.GPPrior(ngvi.kernels.SquaredExponential()), likelihood, X, y, family="coupled"
        )


def test_coupled_family_is_for_natural_gradients_and_dense_gps():
    X, labels = np.zeros((4, 1)), np.array([0, 1, 2, 0])
    model = ngvi.Model(
        ngvi.GPPrior(ngvi.kernels.SquaredExponential()), Softmax(3), X, labels, family="coupled"
    )
    with pytest.raises(ValueError, match="natural parameters only"):
        model.init_variational("moments")
    with pytest.raises(ValueError, match="family"):
        ngvi.SparseModel(
            ngvi.GPPrior(ngvi.kernels.SquaredExponential()),
            Softmax(3),
            X,
            labels,
            inducing=X,
            family="coupled",
        )


def test_kernel_gradient_of_the_coupled_elbo_is_finite_at_the_prior():
    """At the prior every point's covariance is `k(x, x) I` (repeated eigenvalues), where an
    eigendecomposition's gradient is NaN; the ELBO's gradient must match finite differences
    (its Monte Carlo draws are fixed, so it is a smooth function of the kernel)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(18, 2))
    labels = rng.integers(0, 3, 18)

    def elbo(log_variance):
        kernel = ngvi.kernels.SquaredExponential(variance=jnp.exp(log_variance), lengthscale=0.8)
        model = ngvi.Model(
            ngvi.GPPrior(kernel), Softmax(3, num_mc_samples=32), X, labels, family="coupled"
        )
        return model.elbo(model.init_variational())  # at the prior

    grad = float(jax.grad(elbo)(jnp.asarray(0.3)))
    step = 1e-5
    central = (float(elbo(jnp.asarray(0.3 + step))) - float(elbo(jnp.asarray(0.3 - step)))) / (
        2 * step
    )
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, central, rtol=1e-6)
