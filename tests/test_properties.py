"""Property-based tests (hypothesis) of the Gaussian conversions and the safeguarded steps, in
float64 and float32.

Truth is numpy in float64: explicit inverses of small, well-conditioned matrices (tests only),
and the textbook KL (`helpers.numpy_kl`). Shapes are fixed so that each function compiles once
per dtype; examples are few and have no deadline (the first one per dtype compiles).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_kl
from hypothesis import HealthCheck, example, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import ngvi
from ngvi.families.sites import factorise
from ngvi.optimizers.safeguards import backoff_update, safeguarded_update

DTYPES = [np.float64, np.float32]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIM, SITES = 4, 6
X_SITES = np.linspace(-2.5, 2.5, SITES)
K_SITES = np.exp(-0.5 * (X_SITES[:, None] - X_SITES[None, :]) ** 2) + 1e-6 * np.eye(SITES)


def unit(shape, low=-1.0, high=1.0):
    return arrays(np.float64, shape, elements=st.floats(low, high, allow_subnormal=False))


@st.composite
def covariances(draw, dim=DIM):
    """`L L^T` with `L` lower triangular, diagonal in [0.5, 2], entries below it in [-1, 1]."""
    factor = np.tril(draw(unit((dim, dim))), -1) + np.diag(draw(unit((dim,), 0.5, 2.0)))
    return factor @ factor.T


@st.composite
def symmetric(draw, dim=DIM, scale=3.0):
    """A symmetric matrix, often indefinite."""
    a = scale * draw(unit((dim, dim)))
    return 0.5 * (a + a.T)


@st.composite
def site_precisions(draw, n=SITES):
    """Site precisions across regimes: 0, weak (`W K_ii < 1`) and strong (up to 1e6)."""
    exponents = draw(unit((n,), -3.0, 6.0))
    zero = draw(arrays(np.bool_, (n,)))
    return np.where(zero, 0.0, 10.0**exponents)


step_sizes = st.floats(1e-3, 1.0)


def eps(dtype):
    return float(np.finfo(dtype).eps)


_JITTED = {}


def run(dtype, fn, *args):
    """`fn(*args)` with arrays in `dtype` (x64 switched to match), back as float64 numpy.
    `fn` must be a module-level function (its compilation is cached per shape and dtype)."""
    jitted = _JITTED.setdefault(fn, jax.jit(fn))
    with jax.enable_x64(dtype == np.float64):
        args = [jnp.asarray(a, dtype) if isinstance(a, np.ndarray) else a for a in args]
        return jax.tree.map(lambda x: np.asarray(x, np.float64), jitted(*args))


def as_seen(dtype, *arrays):
    """The arrays rounded to `dtype` (as `run` hands them to the library), back in float64:
    the reference must start from the same inputs (a drawn 4e-266 is 0 in float32)."""
    return [np.asarray(a, dtype).astype(np.float64) for a in arrays]


def relative_error(got, want):
    """Normwise relative error; below a norm of 1e-3 it is absolute (scaled by 1e3), since a
    float32 input underflows to 0 long before float64's does."""
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(covariance=covariances(), mean=unit((DIM,), -3.0, 3.0))
def test_natural_moments_round_trip(dtype, covariance, mean):
    precision = np.linalg.inv(covariance)
    eta1, eta2 = run(dtype, ngvi.moments_to_natural, mean, covariance)
    cond = np.linalg.cond(covariance)
    assert relative_error(eta2, -0.5 * precision) < 20 * eps(dtype) * cond
    assert relative_error(eta1, precision @ mean) < 20 * eps(dtype) * cond**1.5
    back_mean, back_covariance = run(dtype, ngvi.natural_to_moments, eta1, eta2)
    assert relative_error(back_covariance, covariance) < 20 * eps(dtype) * cond**2
    assert relative_error(back_mean, mean) < 20 * eps(dtype) * cond**2


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    w=site_precisions(),
    site_mean=unit((SITES,), -3.0, 3.0),
    extra=unit((SITES,)),
    prior_mean=unit((SITES,)),
)
def test_site_form_matches_the_dense_posterior_and_kl(dtype, w, site_mean, extra, prior_mean):
    """`factorise` (through `B = I + W^1/2 K W^1/2`, both forms of the weights) against
    `Sigma = (K^-1 + W)^-1`, `mu = Sigma (K^-1 m0 + lam1)` and the textbook KL."""
    lam1 = w * site_mean + extra
    precision = np.linalg.inv(K_SITES) + np.diag(w)
    covariance = np.linalg.inv(precision)
    mean = covariance @ (np.linalg.solve(K_SITES, prior_mean) + lam1)
    kl = numpy_kl(mean, covariance, prior_mean, K_SITES)
    factors = run(dtype, factorise, K_SITES, prior_mean, lam1, -0.5 * w)
    # float32 keeps about eps * cond(B) of the mean; B's condition grows with max W.
    cond_b = 1.0 + np.max(w) * np.linalg.eigvalsh(K_SITES)[-1]
    scale = 1.0 if dtype == np.float64 else min(cond_b, 1e4)
    tol = 1e3 * eps(dtype) * scale
    np.testing.assert_allclose(factors.mean, mean, atol=tol * (1 + np.abs(mean).max()))
    variance = np.diag(covariance)
    np.testing.assert_allclose(factors.variance, variance, rtol=tol, atol=tol * 1e-6)
    assert abs(factors.kl - kl) < 10 * tol * (1.0 + abs(kl))


def _site_step(w, lam1, target_lam1, target_w, site_mean, rho, **options):
    """`backoff_update` of one latent's sites, and `safeguarded_update` at the accepted rho."""
    q = ngvi.SiteGaussianVariational(lam1[None], -0.5 * w[None])
    target = (target_lam1[None], -0.5 * target_w[None])
    new, accepted, _ = backoff_update(q, target, site_mean[None], rho, 10, **options)
    direct = safeguarded_update(q, target, site_mean[None], accepted, **options)
    return new.site_precision[0], accepted, direct.site_precision[0], new.precision_is_valid()


_SITE_STEPS = {
    "plain": functools.partial(_site_step),
    "psd_correction": functools.partial(_site_step, psd_correction=True),
    "precision_floor": functools.partial(_site_step, precision_floor=1e-3),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("safeguard", ["plain", "psd_correction", "precision_floor"])
@SETTINGS
@given(
    w=unit((SITES,), 1e-3, 1e3),
    lam1=unit((SITES,), -3.0, 3.0),
    target_w=unit((SITES,), -5.0, 5.0),
    target_lam1=unit((SITES,), -3.0, 3.0),
    site_mean=unit((SITES,), -3.0, 3.0),
    rho=step_sizes,
)
def test_every_safeguarded_site_step_keeps_site_precisions_valid(
    dtype, safeguard, w, lam1, target_w, target_lam1, site_mean, rho
):
    step = _SITE_STEPS[safeguard]
    new_w, accepted, direct_w, valid = run(
        dtype, step, w, lam1, target_lam1, target_w, site_mean, rho
    )
    assert valid and np.all(new_w >= 0) and np.all(np.isfinite(new_w))
    if accepted > 0:
        np.testing.assert_array_equal(new_w, direct_w)  # the step taken is the one reported
    if safeguard == "psd_correction":
        assert accepted == pytest.approx(rho, rel=1e-6)  # valid at any step size
        assert np.all(new_w > 0)
    if safeguard == "precision_floor":
        assert accepted == pytest.approx(rho, rel=1e-6) and np.all(new_w >= 1e-3 * (1 - 1e-6))
    if np.all(target_w >= 0):  # a convex combination of valid sites needs no backoff
        assert accepted == pytest.approx(rho, rel=1e-6)


def _dense_step(eta1, precision, target_eta1, target_precision, rho, psd_correction):
    q = ngvi.DenseGaussianVariational(eta1[None], -0.5 * precision[None])
    target = (target_eta1[None], -0.5 * target_precision[None])
    mean = jnp.linalg.solve(precision, eta1)[None]
    new, accepted, _ = backoff_update(q, target, mean, rho, 10, psd_correction=psd_correction)
    return new.precision[0], accepted, new.precision_is_valid()


_DENSE_STEPS = {flag: functools.partial(_dense_step, psd_correction=flag) for flag in (0, 1)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("psd_correction", [False, True])
@SETTINGS
@given(
    covariance=covariances(),
    eta1=unit((DIM,), -3.0, 3.0),
    target_precision=symmetric(),
    target_eta1=unit((DIM,), -3.0, 3.0),
    rho=step_sizes,
)
def test_every_safeguarded_dense_step_keeps_the_precision_positive_definite(
    dtype, psd_correction, covariance, eta1, target_precision, target_eta1, rho
):
    precision = np.linalg.inv(covariance)

    step = _DENSE_STEPS[psd_correction]
    new_precision, accepted, valid = run(
        dtype, step, eta1, precision, target_eta1, target_precision, rho
    )
    assert valid
    assert np.linalg.eigvalsh(new_precision)[0] > 0
    if psd_correction:
        assert accepted == pytest.approx(rho, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(covariance=covariances(), target=symmetric(), lr=st.floats(1e-3, 2.0))
def test_riemannian_psd_correction_is_positive_definite_for_any_target(
    dtype, covariance, target, lr
):
    """`S_new = S/2 + (S - lr G) S^-1 (S - lr G) / 2 >= S / 2` for any symmetric target."""
    precision = np.linalg.inv(covariance)
    new = run(dtype, ngvi.riemannian_psd_correction, precision, target, lr)
    floor = 0.5 * np.linalg.eigvalsh(precision)[0]
    assert np.linalg.eigvalsh(new)[0] >= floor - 100 * eps(dtype) * np.abs(new).max()
    diagonal_new = run(
        dtype, ngvi.riemannian_psd_correction, np.diag(precision), np.diag(target), lr
    )
    assert np.all(diagonal_new >= 0.5 * np.diag(precision) * (1 - 10 * eps(dtype)))


def _natural_step(mean, precision, grad, hess, prior_mean, prior_precision, lr):
    """`damped_natural_update` toward `eta_prior + site(E[g], E[H])`, in moments (numpy)."""
    eta = (precision @ mean, -0.5 * precision)
    site = ngvi.likelihood_site(mean, grad, hess)
    target = (
        prior_precision @ prior_mean + np.asarray(site[0]),
        -0.5 * prior_precision + np.asarray(site[1]),
    )
    eta1, eta2 = ngvi.damped_natural_update(eta, target, lr)
    new_precision = -2.0 * np.asarray(eta2)
    return np.linalg.solve(new_precision, np.asarray(eta1)), new_precision


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    covariance=covariances(),
    prior_covariance=covariances(),
    mean=unit((DIM,), -2.0, 2.0),
    prior_mean=unit((DIM,)),
    grad=unit((DIM,), -3.0, 3.0),
    root=unit((DIM, DIM)),
    lr=step_sizes,
)
def test_blr_full_update_is_the_natural_step_and_stays_positive_definite(
    dtype, covariance, prior_covariance, mean, prior_mean, grad, root, lr
):
    precision, prior_precision = np.linalg.inv(covariance), np.linalg.inv(prior_covariance)
    hess = -root @ root.T  # log-concave: E_q[H] negative semi-definite
    new_mean, new_precision = run(
        dtype, ngvi.blr_full_update, mean, precision, grad, hess, prior_mean, prior_precision, lr
    )
    assert np.linalg.eigvalsh(new_precision)[0] > 0
    with jax.enable_x64(True):
        want_mean, want_precision = _natural_step(
            mean, precision, grad, hess, prior_mean, prior_precision, lr
        )
    cond = np.linalg.cond(new_precision)
    assert relative_error(new_precision, want_precision) < 100 * eps(dtype)
    assert relative_error(new_mean, want_mean) < 100 * eps(dtype) * cond


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    precision=unit((DIM,), 0.1, 10.0),
    prior_precision=unit((DIM,), 0.1, 10.0),
    mean=unit((DIM,), -2.0, 2.0),
    prior_mean=unit((DIM,)),
    grad=unit((DIM,), -3.0, 3.0),
    hess=unit((DIM,), -5.0, 0.0),
    lr=step_sizes,
)
@example(  # a gradient that is 0 in float32 (found by hypothesis in CI)
    precision=np.ones(DIM),
    prior_precision=np.ones(DIM),
    mean=np.zeros(DIM),
    prior_mean=np.zeros(DIM),
    grad=np.full(DIM, 4.15360751e-266),
    hess=np.zeros(DIM),
    lr=1.0,
)
@example(  # a new mean below the smallest normal number (found by hypothesis in CI)
    precision=np.full(DIM, 2.0),
    prior_precision=np.ones(DIM),
    mean=np.zeros(DIM),
    prior_mean=np.zeros(DIM),
    grad=np.full(DIM, 2.78568449e-305),
    hess=np.zeros(DIM),
    lr=1e-3,
)
def test_blr_diag_update_is_the_natural_step_and_stays_positive(
    dtype, precision, prior_precision, mean, prior_mean, grad, hess, lr
):
    precision, prior_precision, mean, prior_mean, grad, hess = as_seen(
        dtype, precision, prior_precision, mean, prior_mean, grad, hess
    )
    new_mean, new_precision = run(
        dtype, ngvi.blr_diag_update, mean, precision, grad, hess, prior_mean, prior_precision, lr
    )
    assert np.all(new_precision > 0)
    with jax.enable_x64(True):
        want_mean, want_precision = _natural_step(
            mean, np.diag(precision), grad, np.diag(hess), prior_mean, np.diag(prior_precision), lr
        )
    np.testing.assert_allclose(new_precision, np.diag(want_precision), rtol=100 * eps(dtype))
    # XLA on CPU flushes results below the smallest normal number to zero (the reference's
    # 1.4e-308 came back as 0), so differences below it are not the update's.
    scale = 1e3 * eps(dtype) * np.abs(want_mean).max()
    atol = max(scale, float(np.finfo(dtype).tiny))
    np.testing.assert_allclose(new_mean, want_mean, rtol=1e3 * eps(dtype), atol=atol)
