import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from ngvi.quadrature import gauss_hermite_expectation

MEAN = np.array([-1.5, 0.0, 0.3, 2.0])
VARIANCE = np.array([0.2, 1.0, 2.5, 0.01])


def gaussian_integral(fn, m, v):
    """Brute-force E[fn(f)] for f ~ N(m, v) with adaptive quadrature on m +- 15 sd."""
    sd = np.sqrt(v)
    value, _ = scipy.integrate.quad(
        lambda f: fn(f) * scipy.stats.norm.pdf(f, m, sd),
        m - 15 * sd,
        m + 15 * sd,
        epsabs=1e-13,
        limit=200,
    )
    return value


@pytest.mark.parametrize("k", range(1, 9))
def test_raw_moments_match_closed_form(k):
    got = gauss_hermite_expectation(lambda f: f**k, jnp.asarray(MEAN), jnp.asarray(VARIANCE))
    want = [scipy.stats.norm(m, np.sqrt(v)).moment(k) for m, v in zip(MEAN, VARIANCE, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_polynomial_exactness_depends_on_num_points():
    # Q nodes integrate degree 2Q - 1 exactly, but not degree 2Q.
    m, v = jnp.array([0.0]), jnp.array([1.0])
    exact = gauss_hermite_expectation(lambda f: f**6, m, v, num_points=4)
    inexact = gauss_hermite_expectation(lambda f: f**8, m, v, num_points=4)
    np.testing.assert_allclose(exact, 15.0, rtol=1e-12)
    assert abs(inexact[0] - 105.0) > 1.0


@pytest.mark.parametrize("num_points", [400, 1000])
def test_rules_with_hundreds_of_nodes_are_finite_and_exact(num_points):
    # numpy's `hermegauss` returns NaN weights beyond ~300 nodes; a likelihood with
    # `num_quadrature_points=200` met it in its doubled-node accuracy check, and at 400 its ELBO
    # was NaN. Truth: the moments of N(0.3, 2) and E[cos f] = cos(m) exp(-v / 2).
    m, v = jnp.array([0.3]), jnp.array([2.0])
    for k in (2, 4, 8):
        got = gauss_hermite_expectation(lambda f, k=k: f**k, m, v, num_points)
        want = scipy.stats.norm(0.3, np.sqrt(2.0)).moment(k)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    got = gauss_hermite_expectation(jnp.cos, m, v, num_points)
    np.testing.assert_allclose(got, np.cos(0.3) * np.exp(-1.0), rtol=1e-12)


def test_exp_matches_lognormal_mean():
    got = gauss_hermite_expectation(jnp.exp, jnp.asarray(MEAN), jnp.asarray(VARIANCE))
    np.testing.assert_allclose(got, np.exp(MEAN + VARIANCE / 2), rtol=1e-12)


def test_nonlinear_function_matches_brute_force_integration():
    def fn_np(f):
        return np.sin(2 * f) * np.logaddexp(0.0, f)

    def fn_jnp(f):
        return jnp.sin(2 * f) * jax.nn.softplus(f)

    got = gauss_hermite_expectation(fn_jnp, jnp.asarray(MEAN), jnp.asarray(VARIANCE), 60)
    want = [gaussian_integral(fn_np, m, v) for m, v in zip(MEAN, VARIANCE, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_pytree_output_and_per_point_data():
    y = jnp.array([1.0, -2.0, 0.5, 3.0])
    first, second = gauss_hermite_expectation(
        lambda f: (y * f, (f - y) ** 2), jnp.asarray(MEAN), jnp.asarray(VARIANCE)
    )
    np.testing.assert_allclose(first, y * MEAN, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(second, (MEAN - y) ** 2 + VARIANCE, rtol=1e-12)


def test_zero_and_negative_roundoff_variance():
    m = jnp.array([0.7, -0.2])
    got = gauss_hermite_expectation(jnp.tanh, m, jnp.array([0.0, -1e-18]))
    np.testing.assert_allclose(got, jnp.tanh(m), rtol=1e-14)


def test_float32_stays_float32_under_jit():
    m = jnp.asarray(MEAN, jnp.float32)
    v = jnp.asarray(VARIANCE, jnp.float32)
    got = jax.jit(lambda m, v: gauss_hermite_expectation(jnp.exp, m, v))(m, v)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np.exp(MEAN + VARIANCE / 2), rtol=1e-5)


def test_bad_num_points():
    with pytest.raises(ValueError, match="num_points"):
        gauss_hermite_expectation(jnp.exp, jnp.zeros(2), jnp.ones(2), num_points=0)
