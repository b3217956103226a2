"""Float32 accuracy of the dense GP's site form when the noise is small (issue 13, item 1).

With Gaussian noise `s2` far below the prior variance the sites are strong (`W = 1 / s2`), and
the textbook site weights `a = lam1 - W^1/2 B^-1 W^1/2 (m0 + K lam1)` subtract two numbers of
size `|y| / s2`: in float32 with `s2 = 1e-6` the ELBO came out as -8.8e6 against an exact log
marginal likelihood of +150.8, and the predictions were off by 1.24, silently. Truth here is
exact GP regression computed independently in float64 with numpy; the fits run in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngvi

VARIANCE, LENGTHSCALE, JITTER = 1.5, 1.0, 1e-6


def _kernel(a, b):
    return VARIANCE * np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / LENGTHSCALE**2)


def exact_regression(X, y, noise, X_new):
    """Log marginal likelihood and posterior mean and variance of `f(X_new)` (float64)."""
    K = _kernel(X, X) + JITTER * np.eye(len(X))
    L = np.linalg.cholesky(K + noise * np.eye(len(X)))
    alpha = np.linalg.solve(L.T, np.linalg.solve(L, y))
    log_marginal = -0.5 * y @ alpha - np.sum(np.log(np.diag(L))) - 0.5 * len(X) * np.log(2 * np.pi)
    cross = _kernel(X, X_new)
    v = np.linalg.solve(L, cross)
    return log_marginal, cross.T @ alpha, VARIANCE - np.sum(v**2, axis=0)


# ELBO tolerances in nats. Rounding K to float32 alone moves the exact answer by 0.3 nats at
# s2 = 1e-6 and 0.65 at 1e-8 (the jitter and noise are below float32's resolution of K), so
# smaller noise cannot be held tighter in float32.
@pytest.mark.parametrize(
    ("noise", "elbo_tol"), [(1e-2, 0.01), (1e-4, 0.05), (1e-6, 2.0), (1e-8, 2.0)]
)
def test_float32_small_noise_regression_matches_exact_gp(noise, elbo_tol):
    X = np.linspace(-3.0, 3.0, 40)
    y = np.sin(X)
    X_new = np.linspace(-2.9, 2.9, 9)
    log_marginal, mean, variance = exact_regression(X, y, noise, X_new)
    with jax.enable_x64(False):
        kernel = ngvi.kernels.SquaredExponential(VARIANCE, LENGTHSCALE)
        likelihood = ngvi.likelihoods.Gaussian(variance=noise)
        model = ngvi.Model(ngvi.GPPrior(kernel, jitter=JITTER), likelihood, X, y)
        assert model.y.dtype == jnp.float32
        result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), 20, progress=False)
        prediction = ngvi.predict(model, result.q, X_new)
        factors = result.q.factorise(model)
    assert result.q.parameters[0].dtype == jnp.float32
    assert result.converged
    assert float(result.elbo) == pytest.approx(log_marginal, abs=elbo_tol)
    np.testing.assert_allclose(prediction.latent_mean, mean, atol=1e-3)
    np.testing.assert_allclose(prediction.latent_variance, variance, atol=2e-5)
    # At the training points the mean is the data, to within the noise's reach.
    train_mean = np.asarray(factors.mean[0])
    _, exact_train_mean, _ = exact_regression(X, y, noise, X)
    np.testing.assert_allclose(train_mean, exact_train_mean, atol=1e-3)
