"""The logistic's Gaussian expectations at any variance, against adaptive quadrature in f."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

import ngvi
from ngvi.likelihoods import AbstractLikelihood, BernoulliLogit
from ngvi.likelihoods.logistic_expectations import (
    _logistic_parts,
    expected_log_sigmoid,
    expected_sigmoid,
    logistic_statistics,
)

MEANS = np.array([-80.0, -20.0, -5.0, -1.0, 0.0, 0.5, 3.0, 10.0, 60.0])
STDS = [0.3, 0.59, 0.61, 1.0, 3.0, 25.0, 100.0]


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _sigmoid(x):
    return scipy.special.expit(x)


def _hessian(x):
    return -_sigmoid(x) * _sigmoid(-x)


def _integral(fn, m, s):
    """E[fn(x)], x ~ N(m, s^2), by adaptive quadrature on m +- 40 s, split at the kinkless but
    narrow transition x = 0 when it lies inside (independent of the library's rules)."""

    def integrand(x):
        return fn(x) * scipy.stats.norm.pdf(x, m, s)

    lo, hi = m - 40 * s, m + 40 * s
    cuts = [lo] + ([0.0] if lo < 0.0 < hi else []) + [hi]
    return sum(
        scipy.integrate.quad(integrand, a, b, epsabs=1e-15, epsrel=1e-14, limit=500)[0]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    )


@pytest.mark.parametrize("std", STDS)
def test_values_and_derivatives_match_adaptive_quadrature_at_any_width(std):
    mean, variance = jnp.asarray(MEANS), jnp.full(MEANS.shape, std**2)
    value, grad, hess = logistic_statistics(mean, variance)
    want = {
        "value": [_integral(_log_sigmoid, m, std) for m in MEANS],
        "grad": [_integral(lambda x: _sigmoid(-x), m, std) for m in MEANS],  # E[d/dx log sigma]
        "hess": [_integral(_hessian, m, std) for m in MEANS],
        "probability": [_integral(_sigmoid, m, std) for m in MEANS],
    }
    np.testing.assert_allclose(value, want["value"], rtol=0, atol=1e-11)
    np.testing.assert_allclose(expected_log_sigmoid(mean, variance), value, rtol=0, atol=1e-14)
    np.testing.assert_allclose(grad, want["grad"], rtol=0, atol=1e-11)
    np.testing.assert_allclose(hess, want["hess"], rtol=0, atol=1e-11)
    np.testing.assert_allclose(expected_sigmoid(mean, variance), want["probability"], atol=1e-11)


def test_plain_gauss_hermite_is_wrong_where_the_split_rule_is_used():
    """The reason for the split rule: 20-node Gauss-Hermite at sd 5 is off by over 1e-3."""
    likelihood, y = BernoulliLogit(), jnp.ones(3)
    mean, variance = jnp.array([-1.0, 0.0, 2.0]), jnp.full(3, 25.0)
    plain = AbstractLikelihood.expected_log_prob(likelihood, y, mean, variance)
    want = [_integral(_log_sigmoid, m, 5.0) for m in np.asarray(mean)]
    assert np.max(np.abs(np.asarray(plain) - want)) > 1e-3
    np.testing.assert_allclose(likelihood.expected_log_prob(y, mean, variance), want, atol=1e-11)


def test_statistics_are_the_derivatives_of_the_reported_value():
    """Bonnet and Price on the wide side: E[g] = dQ/dm, E[H] = 2 dQ/dv, by central differences
    of the value at variances on both sides of the switch."""
    likelihood = BernoulliLogit()
    y = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0])
    mean = jnp.array([-3.0, 0.2, 7.0, 40.0, 0.0])
    variance = jnp.array([0.5, 2.0, 50.0, 400.0, 0.3601])
    _, grad, hess = likelihood.expected_derivatives(y, mean, variance)
    h = 1e-5

    def value(m, v):
        return likelihood.expected_log_prob(y, m, v)

    d_mean = (value(mean + h, variance) - value(mean - h, variance)) / (2 * h)
    d_variance = (value(mean, variance + h) - value(mean, variance - h)) / (2 * h)
    np.testing.assert_allclose(grad, d_mean, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(hess, 2 * d_variance, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("std", [0.3, 1.0, 25.0])
def test_autodiff_of_the_value_is_the_expected_gradient_and_half_hessian(std):
    """What `fit_hyperparameters` differentiates: `jax.grad` of `expected_log_sigmoid` in the
    mean and the variance (a custom JVP from `logistic_statistics`, so the gradient's program
    does not differentiate the quadrature) against adaptive quadrature of Bonnet and Price,
    `dQ/dm = E[sigma(-x)]`, `dQ/dv = E[H] / 2`."""
    means = MEANS[2:-1]  # -5 ... 10

    def total(m, v):
        return jnp.sum(expected_log_sigmoid(m, v))

    d_mean, d_variance = jax.grad(total, argnums=(0, 1))(
        jnp.asarray(means), jnp.full(means.shape, std**2)
    )
    want_mean = [_integral(lambda x: _sigmoid(-x), m, std) for m in means]
    want_variance = [0.5 * _integral(_hessian, m, std) for m in means]
    np.testing.assert_allclose(d_mean, want_mean, rtol=0, atol=1e-11)
    np.testing.assert_allclose(d_variance, want_variance, rtol=0, atol=1e-11)


def test_continuous_across_the_switch():
    mean = jnp.linspace(-4.0, 4.0, 9)
    below = logistic_statistics(mean, jnp.full(9, 0.6**2 * (1 - 1e-12)))
    above = logistic_statistics(mean, jnp.full(9, 0.6**2 * (1 + 1e-12)))
    for b, a in zip(below, above, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-11)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_finite_in_both_precisions_at_zero_and_huge_variance(dtype):
    grid = jnp.linspace(-60.0, 60.0, 25, dtype=dtype)
    variances = jnp.asarray([0.0, 1e-30, 0.36, 1e4, 1e8], dtype)
    mean = jnp.tile(grid, variances.size)
    v = jnp.repeat(variances, grid.size)
    outputs = jax.jit(lambda m, v: (*logistic_statistics(m, v), expected_sigmoid(m, v)))(mean, v)
    for out in outputs:
        assert out.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(out))), v[~jnp.isfinite(out)]
    # float32 still agrees with the float64 reference where the split rule is used
    m, v = jnp.array([0.5, -3.0], dtype), jnp.array([9.0, 400.0], dtype)
    want = [_integral(_log_sigmoid, 0.5, 3.0), _integral(_log_sigmoid, -3.0, 20.0)]
    np.testing.assert_allclose(expected_log_sigmoid(m, v), want, rtol=1e-5)


def test_a_large_signal_variance_fit_settles_to_its_reported_optimum():
    """Reproducer: with 20-node Gauss-Hermite, the natural-gradient iteration of a logit GP with
    signal variance 1e3 (latent sds up to 14) moved the ELBO by 1e-3 or more per step forever,
    so it never met its tolerance; with consistent statistics it converges, and a second step
    size converges to the same ELBO."""
    key_x, key_y = jax.random.split(jax.random.key(3))
    X = jax.random.normal(key_x, (60, 2))
    y = (X[:, 0] + 0.3 * jax.random.normal(key_y, (60,)) > 0).astype(float)
    kernel = ngvi.kernels.SquaredExponential(variance=1e3, lengthscale=1.5)
    model = ngvi.Model(ngvi.GPPrior(kernel, jitter=1e-6), BernoulliLogit(), X, y)
    fast = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=60, progress=False)
    slow = ngvi.fit(model, ngvi.NaturalGradient(lr=0.5), num_steps=120, progress=False)
    assert fast.converged, fast.message
    assert slow.converged, slow.message
    assert float(jnp.max(model.predict_latent(fast.q, X).variance)) > 12.0**2  # the wide regime
    np.testing.assert_allclose(float(model.elbo(fast.q)), float(model.elbo(slow.q)), atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_logistic_parts_match_scipy_to_a_few_ulps(dtype):
    x = np.concatenate([np.linspace(-60.0, 60.0, 24_001), [-700.0, -1e-300, 0.0, 1e-300, 700.0]])
    x = x.astype(dtype)
    value, sigma_minus, product = (np.asarray(a) for a in _logistic_parts(jnp.asarray(x)))
    x64 = x.astype(np.float64)
    want = (-np.logaddexp(0.0, -x64), scipy.special.expit(-x64), scipy.special.expit(x64))
    want = (want[0], want[1], want[1] * want[2])
    for got, expected in zip((value, sigma_minus, product), want, strict=True):
        assert got.dtype == dtype
        representable = np.abs(expected) > np.finfo(dtype).tiny
        ulps = np.abs(got - expected) / np.spacing(np.abs(expected).astype(dtype))
        assert np.max(ulps[representable]) <= 4
