"""A fit whose ELBO rests on an inaccurate Gauss-Hermite quadrature says so."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

import ngvi


def _data():
    key_x, key_y = jax.random.split(jax.random.key(3))
    X = jax.random.normal(key_x, (60, 2))
    y = (X[:, 0] + 0.3 * jax.random.normal(key_y, (60,)) > 0).astype(float)
    return X, y


def _model(likelihood, signal_variance):
    X, y = _data()
    kernel = ngvi.kernels.SquaredExponential(variance=signal_variance, lengthscale=1.5)
    return ngvi.Model(ngvi.GPPrior(kernel, jitter=1e-6), likelihood, X, y)


def _exact_data_term(model, q):
    """sum_i E[log Phi((2 y_i - 1) f_i)] by adaptive quadrature, split at f = 0."""
    marginals = _marginals(model, q)
    total = 0.0
    for m, v, label in zip(
        np.asarray(marginals.mean[:, 0]),
        np.asarray(marginals.variance[:, 0]),
        np.asarray(model.y),
        strict=True,
    ):
        s, sign = np.sqrt(v), 2 * label - 1

        def integrand(f, m=m, s=s, sign=sign):
            return scipy.special.log_ndtr(sign * f) * scipy.stats.norm.pdf(f, m, s)

        lo, hi = m - 40 * s, m + 40 * s
        cuts = [lo] + ([0.0] if lo < 0.0 < hi else []) + [hi]
        total += sum(
            scipy.integrate.quad(integrand, a, b, epsabs=1e-13, limit=500)[0]
            for a, b in zip(cuts[:-1], cuts[1:], strict=True)
        )
    return total


def test_wide_probit_marginals_warn_and_the_elbo_is_indeed_off():
    model = _model(ngvi.likelihoods.Probit(), 1e3)
    with pytest.warns(UserWarning, match="Gauss-Hermite quadrature moves by"):
        result = ngvi.fit(model, ngvi.NaturalGradient(lr=0.5), num_steps=50, progress=False)
    estimate = float(model.quadrature_error(result.q))
    reported = float(jnp.sum(model.expected_log_likelihood(model.y, _marginals(model, result.q))))
    actual = abs(reported - _exact_data_term(model, result.q))
    assert actual > 1e-3  # the reported ELBO really is off, by independent quadrature
    assert 0.1 * actual < estimate < 10 * actual  # and the warning says by about how much


def _marginals(model, q):
    return model.latent_marginals_and_kl(q)[0]


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_moderate_marginals_and_exact_rules_do_not_warn():
    for likelihood, variance in [
        (ngvi.likelihoods.Probit(), 1.0),
        (ngvi.likelihoods.BernoulliLogit(), 1e3),  # its own rule, exact at any width
    ]:
        model = _model(likelihood, variance)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = ngvi.fit(model, ngvi.NaturalGradient(lr=0.5), num_steps=200, progress=False)
        assert result.converged, result.message
        if isinstance(likelihood, ngvi.likelihoods.BernoulliLogit):
            assert float(model.quadrature_error(result.q)) == 0.0
        else:
            reported = float(
                jnp.sum(model.expected_log_likelihood(model.y, _marginals(model, result.q)))
            )
            assert abs(reported - _exact_data_term(model, result.q)) < 1e-8
