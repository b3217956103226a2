"""The probit's statistics from `ngvi.likelihoods.normal_tail`: the arithmetic `log1p` and the
rational gap function, against numpy/scipy and the asymptotic series."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from ngvi.likelihoods.elementwise import vectorised_log1p
from ngvi.likelihoods.normal_tail import lower_gap, probit_parts


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_log1p_matches_numpy_to_a_few_ulps(dtype):
    big = 1e30 if dtype == jnp.float32 else 1e300
    tiny = 1e-30 if dtype == jnp.float32 else 1e-300
    v = np.concatenate(
        [
            -np.geomspace(tiny, 0.5, 2000),
            np.geomspace(tiny, big, 4000),
            np.linspace(-0.5, 3.0, 4001),  # across the sqrt(1/2) and sqrt(2) switches
        ]
    ).astype(dtype)
    got = np.asarray(vectorised_log1p(jnp.asarray(v)))
    assert got.dtype == dtype
    want = np.log1p(v.astype(np.float64))
    ulps = np.abs(got - want) / np.spacing(np.abs(want).astype(dtype))
    nonzero = want != 0
    assert np.max(ulps[nonzero]) <= 4
    assert np.all(got[~nonzero] == 0)


def test_log1p_special_values():
    got = np.asarray(vectorised_log1p(jnp.array([np.inf, 0.0, -0.5, np.nan])))
    assert got[0] == np.inf and got[1] == 0.0 and got[2] == np.log(0.5) and np.isnan(got[3])


def test_lower_gap_matches_erfcx_where_that_reference_is_accurate():
    # r(-u) = sqrt(2/pi) / erfcx(u / sqrt 2); subtracting u loses at most ~u^2 of relative
    # accuracy, so on [0, 5] the reference is good to ~1e-14.
    u = np.linspace(0.0, 5.0, 5001)
    want = np.sqrt(2 / np.pi) / scipy.special.erfcx(u / np.sqrt(2)) - u
    np.testing.assert_allclose(np.asarray(lower_gap(jnp.asarray(u))), want, rtol=2e-14)


def test_probit_far_tail_matches_the_asymptotic_series():
    # Beyond the erfcx reference's range: r(-t) - t = 1/t - 2/t^3 + 10/t^5 - 74/t^7 + ...,
    # whose omitted terms are below 1e-16 relative for t >= 200; the gap and r stay finite
    # up to the largest float.
    t = np.array([200.0, 1e3, 1e8, 1e150, 1e300])
    log_cdf, r, gap = (np.asarray(a) for a in probit_parts(jnp.asarray(-t)))
    with np.errstate(over="ignore"):
        series = (1 / t) * (1 - 2 / t**2 + 10 / t**4 - 74 / t**6)
    np.testing.assert_allclose(gap, series, rtol=1e-14, atol=0)
    np.testing.assert_allclose(r, t + series, rtol=1e-15, atol=0)
    np.testing.assert_allclose(log_cdf[:3], scipy.special.log_ndtr(-t[:3]), rtol=1e-13)


def test_probit_parts_at_infinities():
    log_cdf, r, gap = (np.asarray(a) for a in probit_parts(jnp.array([-np.inf, np.inf, 0.0])))
    np.testing.assert_array_equal(log_cdf, [-np.inf, 0.0, -np.log(2)])
    np.testing.assert_array_equal(r[:2], [np.inf, 0.0])
    np.testing.assert_allclose(r[2], np.sqrt(2 / np.pi), rtol=1e-15)
    assert gap[0] == 0.0 and gap[1] == np.inf
