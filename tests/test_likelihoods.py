import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
from jaxtyping import Array

from ngvi.likelihoods import (
    AbstractLikelihood,
    BernoulliLogit,
    Gaussian,
    Poisson,
    Probit,
    StudentT,
)

MEAN = jnp.array([-2.0, -0.5, 0.0, 0.4, 1.5])
VARIANCE = jnp.array([0.3, 1.2, 0.05, 2.0, 0.7])
LABELS = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
REAL_Y = jnp.array([-1.0, 0.3, 0.1, 4.0, 2.2])
COUNTS = jnp.array([0.0, 3.0, 1.0, 7.0, 2.0])

EXPOSURE = jnp.array([0.5, 2.0, 1.0, 3.0, 0.1])
MAKERS = {
    "probit": (lambda q: Probit(num_quadrature_points=q), LABELS),
    "logit": (lambda q: BernoulliLogit(num_quadrature_points=q), LABELS),
    "student_t": (lambda q: StudentT(df=3.5, scale=0.8, num_quadrature_points=q), REAL_Y),
    "gaussian": (lambda q: Gaussian(variance=0.4, num_quadrature_points=q), REAL_Y),
    "poisson": (lambda q: Poisson(num_quadrature_points=q), COUNTS),
    "poisson_exposure": (lambda q: Poisson(exposure=EXPOSURE, num_quadrature_points=q), COUNTS),
}


def _case(name, num_points=20):
    make, y = MAKERS[name]
    return make(num_points), y


def gaussian_integral(fn, m, v):
    """Brute-force E[fn(f)] for f ~ N(m, v) with adaptive quadrature on m +- 15 sd."""
    sd = np.sqrt(v)
    value, _ = scipy.integrate.quad(
        lambda f: fn(f) * scipy.stats.norm.pdf(f, m, sd), m - 15 * sd, m + 15 * sd, epsabs=1e-13
    )
    return value


@pytest.mark.parametrize("name", ["gaussian", "poisson", "poisson_exposure"])
def test_default_quadrature_matches_closed_forms(name):
    likelihood, y = _case(name, 40)
    closed = likelihood.expected_derivatives(y, MEAN, VARIANCE)
    generic = AbstractLikelihood.expected_derivatives(likelihood, y, MEAN, VARIANCE)
    for c, g in zip(closed, generic, strict=True):
        np.testing.assert_allclose(c, g, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        likelihood.expected_log_prob(y, MEAN, VARIANCE),
        AbstractLikelihood.expected_log_prob(likelihood, y, MEAN, VARIANCE),
        rtol=1e-10,
    )
    gauss_newton = AbstractLikelihood.gauss_newton_derivatives(likelihood, y, MEAN, VARIANCE)
    closed_gn = likelihood.gauss_newton_derivatives(y, MEAN, VARIANCE)
    if name != "poisson_exposure":  # conditional moments are per unit exposure
        for c, g in zip(closed_gn, gauss_newton, strict=True):
            np.testing.assert_allclose(c, g, rtol=1e-10, atol=1e-10)


def test_gaussian_closed_forms_by_hand():
    s2 = 0.4
    elp, grad, hess = Gaussian(variance=s2).expected_derivatives(REAL_Y, MEAN, VARIANCE)
    want = scipy.stats.norm.logpdf(REAL_Y, MEAN, np.sqrt(s2)) - VARIANCE / (2 * s2)
    np.testing.assert_allclose(elp, want, rtol=1e-12)
    np.testing.assert_allclose(grad, (REAL_Y - MEAN) / s2, rtol=1e-12)
    np.testing.assert_allclose(hess, -np.ones(5) / s2, rtol=1e-12)


@pytest.mark.parametrize("name", ["probit", "logit", "student_t"])
def test_bonnet_price_finite_differences(name):
    likelihood, y = _case(name, 60)
    _, grad, hess = likelihood.expected_derivatives(y, MEAN, VARIANCE)

    def elp(m, v):
        return likelihood.expected_log_prob(y, m, v)

    h = 1e-5
    d_mean = (elp(MEAN + h, VARIANCE) - elp(MEAN - h, VARIANCE)) / (2 * h)
    d_var = (elp(MEAN, VARIANCE + h) - elp(MEAN, VARIANCE - h)) / (2 * h)
    np.testing.assert_allclose(grad, d_mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(hess / 2, d_var, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["probit", "logit", "student_t"])
def test_expected_log_prob_matches_brute_force_integration(name):
    likelihood, y = _case(name, 50)
    log_prob = {
        "probit": lambda f, y: scipy.special.log_ndtr((2 * y - 1) * f),
        "logit": lambda f, y: -np.logaddexp(0.0, -(2 * y - 1) * f),
        "student_t": lambda f, y: scipy.stats.t.logpdf(y, 3.5, loc=f, scale=0.8),
    }[name]
    got = likelihood.expected_log_prob(y, MEAN, VARIANCE)
    want = [
        gaussian_integral(functools.partial(log_prob, y=yi), m, v)
        for yi, m, v in zip(np.asarray(y), np.asarray(MEAN), np.asarray(VARIANCE), strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _reference_probit_derivatives(x):
    with np.errstate(over="ignore"):
        r = np.sqrt(2 / np.pi) / scipy.special.erfcx(-x / np.sqrt(2))
    return r, -r * (x + r)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("likelihood", [Probit(), BernoulliLogit()], ids=["probit", "logit"])
def test_binary_derivatives_finite_in_the_tails(likelihood, dtype):
    f = jnp.linspace(-40.0, 40.0, 161, dtype=dtype)
    for label in (0.0, 1.0):
        y = jnp.full_like(f, label)
        zero = jnp.zeros_like(f)
        outputs = likelihood.expected_derivatives(y, f, zero)
        outputs += likelihood.expected_derivatives(y, f, jnp.full_like(f, 0.5))
        outputs += likelihood.gauss_newton_derivatives(y, f, jnp.full_like(f, 0.5))
        outputs += likelihood.predictive_moments(f, jnp.full_like(f, 0.5))
        for out in outputs:
            assert out.dtype == dtype
            assert np.all(np.isfinite(out))
        _, grad, hess = outputs[:3]
        assert np.all(hess <= 0)
        if isinstance(likelihood, Probit):
            ref_grad, ref_hess = _reference_probit_derivatives(
                (2 * label - 1) * np.asarray(f, float)
            )
            tol = 1e-4 if dtype == jnp.float32 else 1e-10
            np.testing.assert_allclose(grad, (2 * label - 1) * ref_grad, rtol=tol, atol=1e-30)
            np.testing.assert_allclose(hess, ref_hess, rtol=tol, atol=1e-30)


def test_probit_log_cdf_relatively_accurate_everywhere():
    # jax.scipy.special.log_ndtr is off by 7.5% (relative) just below x = 8, where
    # log Phi(x) = -Phi(-x) ~ -7e-16 and log(ndtr(x)) rounds; the relative accuracy matters
    # to the quadrature's nodes in the tails.
    x = np.concatenate([np.linspace(-60.0, 30.0, 90_001), np.linspace(7.9, 8.1, 2001)])
    got = np.asarray(Probit().log_prob(jnp.asarray(x), jnp.ones_like(jnp.asarray(x))))
    np.testing.assert_allclose(got, scipy.special.log_ndtr(x), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_probit_fused_derivatives_are_the_autodiff_ones(dtype):
    f = jnp.linspace(-45.0, 45.0, 1801, dtype=dtype)
    for label in (0.0, 1.0):
        y = jnp.full_like(f, label)
        fused = Probit().derivatives(f, y)
        generic = AbstractLikelihood.derivatives(Probit(), f, y)
        tol = 1e-5 if dtype == jnp.float32 else 1e-13
        for got, want in zip(fused, generic, strict=True):
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, rtol=tol, atol=0)


class HeteroscedasticGaussian(AbstractLikelihood):
    noise: Array

    def log_prob(self, f, y):
        return -0.5 * (jnp.log(2 * jnp.pi * self.noise) + (y - f) ** 2 / self.noise)


def test_user_subclass_with_only_log_prob():
    noise = jnp.array([0.1, 0.5, 1.0, 2.0, 0.3])
    likelihood = HeteroscedasticGaussian(noise)
    assert likelihood.num_quadrature_points == 20
    elp, grad, hess = eqx.filter_jit(likelihood.expected_derivatives)(REAL_Y, MEAN, VARIANCE)
    want = scipy.stats.norm.logpdf(REAL_Y, MEAN, np.sqrt(noise)) - VARIANCE / (2 * noise)
    np.testing.assert_allclose(elp, want, rtol=1e-12)
    np.testing.assert_allclose(grad, (REAL_Y - MEAN) / noise, rtol=1e-12)
    np.testing.assert_allclose(hess, -1.0 / noise, rtol=1e-12)
    assert HeteroscedasticGaussian(noise, num_quadrature_points=7).num_quadrature_points == 7
    with pytest.raises(NotImplementedError, match="HeteroscedasticGaussian"):
        likelihood.conditional_moments(MEAN)
    with pytest.raises(NotImplementedError, match="HeteroscedasticGaussian"):
        likelihood.distribution(MEAN)


def test_prepare_targets_binary_encodings():
    np.testing.assert_array_equal(Probit().prepare_targets([-1, 1, 1, -1]), [0.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(BernoulliLogit().prepare_targets([0, 1, 1]), [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"Probit labels must be in \{0, 1\}.*found 3"):
        Probit().prepare_targets([0, 1, 3])
    with pytest.raises(ValueError, match="mix"):
        BernoulliLogit().prepare_targets([-1, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        Probit().prepare_targets([0, np.nan])


def test_prepare_targets_poisson():
    np.testing.assert_array_equal(Poisson().prepare_targets([0, 2, 5]), [0.0, 2.0, 5.0])
    with pytest.raises(ValueError, match="non-negative integers; found -1 at index 4"):
        Poisson().prepare_targets([0, 1, 2, 3, -1])
    with pytest.raises(ValueError, match="non-negative integers; found 1.5 at index 1"):
        Poisson().prepare_targets([0, 1.5])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Gaussian(variance=0.0), "variance"),
        (lambda: StudentT(df=-1.0), "df"),
        (lambda: StudentT(scale=np.inf), "scale"),
        (lambda: Poisson(exposure=[1.0, 0.0]), "exposure"),
    ],
)
def test_invalid_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_probit_predictive_closed_form_matches_quadrature():
    likelihood = Probit(num_quadrature_points=60)
    closed = likelihood.predictive_moments(MEAN, VARIANCE)
    generic = AbstractLikelihood.predictive_moments(likelihood, MEAN, VARIANCE)
    np.testing.assert_allclose(closed, generic, rtol=1e-8)


def test_poisson_predictive_matches_brute_force_integration():
    mean, var = Poisson().predictive_moments(MEAN, VARIANCE)
    for mu, sig2, m, v in zip(mean, var, np.asarray(MEAN), np.asarray(VARIANCE), strict=True):
        first = gaussian_integral(np.exp, m, v)
        second = gaussian_integral(lambda f: np.exp(f) + np.exp(2 * f), m, v)
        np.testing.assert_allclose(mu, first, rtol=1e-8)
        np.testing.assert_allclose(sig2, second - first**2, rtol=1e-8)
    generic = AbstractLikelihood.predictive_moments(Poisson(), MEAN, VARIANCE)
    np.testing.assert_allclose(generic, (mean, var), rtol=1e-8)


def test_gaussian_predictive_and_conditional_moments():
    likelihood = Gaussian(variance=0.4)
    mean, var = likelihood.predictive_moments(MEAN, VARIANCE)
    np.testing.assert_allclose(mean, MEAN)
    np.testing.assert_allclose(var, VARIANCE + 0.4)
    np.testing.assert_allclose(likelihood.variance, 0.4, rtol=1e-14)


def test_gauss_newton_curvature():
    f = jnp.linspace(-3.0, 3.0, 13)
    # Probit's stable closed form agrees with the generic autodiff of its conditional moments.
    np.testing.assert_allclose(
        Probit().gauss_newton_hessian(f),
        AbstractLikelihood.gauss_newton_hessian(Probit(), f),
        rtol=1e-12,
    )
    # For the logit (canonical link) it is the exact Hessian.
    logit = BernoulliLogit()
    exact = jax.vmap(jax.grad(jax.grad(lambda f: logit.log_prob(f, 1.0))))(f)
    np.testing.assert_allclose(logit.gauss_newton_hessian(f), exact, rtol=1e-12)
    # Student-t: -1 / Var[y | f] = -(df - 2) / (df scale^2).
    student = StudentT(df=5.0, scale=2.0)
    np.testing.assert_allclose(student.gauss_newton_hessian(f), -3.0 / 20.0, rtol=1e-12)
    _, _, gn = student.gauss_newton_derivatives(REAL_Y, MEAN, VARIANCE)
    np.testing.assert_allclose(gn, -3.0 / 20.0, rtol=1e-12)
    assert np.all(StudentT(df=1.5).gauss_newton_hessian(f) == 0.0)


def test_student_t_hessian_positive_for_outliers():
    likelihood = StudentT(df=4.0, scale=1.0)
    _, _, hess = likelihood.expected_derivatives(
        jnp.array([0.0, 10.0]), jnp.array([0.0, 0.0]), jnp.array([0.01, 0.01])
    )
    assert hess[0] < 0 < hess[1]
    np.testing.assert_allclose(
        likelihood.log_prob(jnp.array(0.3), jnp.array(1.7)),
        scipy.stats.t.logpdf(1.7, 4.0, loc=0.3, scale=1.0),
        rtol=1e-12,
    )


@pytest.mark.parametrize("name", ["probit", "logit", "gaussian"])
def test_distribution_matches_log_prob(name, getkey):
    likelihood, y = _case(name)
    dist = likelihood.distribution(MEAN)
    np.testing.assert_allclose(dist.log_prob(y), likelihood.log_prob(MEAN, y), rtol=1e-10)
    with jax.numpy_rank_promotion("allow"):  # distrax's Bernoulli sampler broadcasts ranks
        assert dist.sample(seed=getkey()).shape == MEAN.shape


def test_poisson_exposure_log_prob():
    exposure = EXPOSURE
    got = Poisson(exposure=exposure).log_prob(MEAN, COUNTS)
    want = scipy.stats.poisson.logpmf(COUNTS, exposure * np.exp(MEAN))
    np.testing.assert_allclose(got, want, rtol=1e-12)
