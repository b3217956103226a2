import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from ngvi.kernels import (
    Matern12,
    Matern32,
    Matern52,
    ProductKernel,
    SquaredExponential,
    SumKernel,
    as_2d_inputs,
)


def _reference_profile(name, r):
    """Kernel profiles in terms of the (unsquared) scaled distance r, written independently."""
    if name == "se":
        return np.exp(-0.5 * r**2)
    if name == "m12":
        return np.exp(-r)
    if name == "m32":
        return (1 + np.sqrt(3) * r) * np.exp(-np.sqrt(3) * r)
    return (1 + np.sqrt(5) * r + 5 * r**2 / 3) * np.exp(-np.sqrt(5) * r)


KERNELS = {"se": SquaredExponential, "m12": Matern12, "m32": Matern32, "m52": Matern52}
ALL = pytest.mark.parametrize("name", list(KERNELS))


def _inputs(key, n, d):
    X = jax.random.normal(key, (n, d)) if d else jax.random.normal(key, (n,))
    return np.asarray(X)


@ALL
@pytest.mark.parametrize("d, lengthscale", [(0, 0.7), (1, 1.3), (2, 0.5), (2, [0.4, 2.0])])
def test_gram_matches_numpy(name, d, lengthscale, getkey):
    X1, X2 = _inputs(getkey(), 7, d), _inputs(getkey(), 5, d)
    kernel = KERNELS[name](variance=1.7, lengthscale=lengthscale)
    K = kernel(X1, X2)
    ell = np.asarray(lengthscale)
    A, B = X1.reshape(len(X1), -1), X2.reshape(len(X2), -1)
    r = cdist(A / ell, B / ell)
    expected = 1.7 * _reference_profile(name, r)
    assert K.shape == (7, 5)
    np.testing.assert_allclose(K, expected, rtol=1e-12, atol=1e-14)


def test_per_dimension_lengthscale_is_weighted_euclidean(getkey):
    X = _inputs(getkey(), 6, 2)
    ell = np.array([0.3, 3.0])
    K = Matern12(lengthscale=ell)(X, X)
    # an explicit double loop, independent of broadcasting in cdist
    expected = np.array([[np.exp(-np.sqrt(np.sum(((a - b) / ell) ** 2))) for b in X] for a in X])
    np.testing.assert_allclose(K, expected, rtol=1e-12)


def test_matern12_is_exponential_kernel(getkey):
    x = _inputs(getkey(), 8, 0)
    K = Matern12(variance=2.0, lengthscale=0.9)(x, x)
    expected = 2.0 * np.exp(-np.abs(x[:, None] - x[None, :]) / 0.9)
    np.testing.assert_allclose(K, expected, rtol=1e-12)


def test_smoother_kernels_decay_more_slowly(getkey):
    # at a fixed distance r in (0, ~1), smoother kernels decay more slowly:
    # m12 < m32 < m52 < se
    x = jnp.array([0.0, 0.5])
    values = [KERNELS[n]()(x, x)[0, 1] for n in ["m12", "m32", "m52", "se"]]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))


@ALL
def test_gram_is_symmetric_psd_with_unit_diagonal(name, getkey):
    X = _inputs(getkey(), 40, 2)
    K = np.asarray(KERNELS[name](variance=1.5, lengthscale=[0.5, 1.5])(X, X))
    np.testing.assert_allclose(K, K.T, rtol=0, atol=1e-14)
    assert np.linalg.eigvalsh(K).min() >= -1e-10 * len(X)
    np.testing.assert_allclose(np.diag(K), 1.5, rtol=1e-14)


@ALL
def test_diagonal_matches_gram(name, getkey):
    X = _inputs(getkey(), 9, 3)
    kernel = KERNELS[name](variance=0.8, lengthscale=[0.5, 1.0, 2.0])
    np.testing.assert_allclose(kernel.diagonal(X), np.diag(kernel(X, X)), rtol=1e-14)
    assert kernel.diagonal(X).shape == (9,)


def test_sum_and_product_kernels(getkey):
    X1, X2 = _inputs(getkey(), 6, 2), _inputs(getkey(), 4, 2)
    k1, k2 = SquaredExponential(variance=2.0, lengthscale=0.5), Matern32(lengthscale=[1.0, 3.0])
    added, multiplied = k1 + k2, k1 * k2
    assert isinstance(added, SumKernel) and isinstance(multiplied, ProductKernel)
    np.testing.assert_allclose(added(X1, X2), k1(X1, X2) + k2(X1, X2), rtol=1e-14)
    np.testing.assert_allclose(multiplied(X1, X2), k1(X1, X2) * k2(X1, X2), rtol=1e-14)
    nested = (k1 + k2) * Matern12()
    np.testing.assert_allclose(
        nested.diagonal(X1), (k1.diagonal(X1) + k2.diagonal(X1)) * 1.0, rtol=1e-14
    )


def test_adding_a_non_kernel_is_a_type_error():
    with pytest.raises(TypeError):
        SquaredExponential() + 1.0


def test_hyperparameters_are_stored_as_logs():
    kernel = Matern52(variance=3.0, lengthscale=[0.5, 2.0])
    np.testing.assert_allclose(kernel.log_variance, np.log(3.0))
    np.testing.assert_allclose(kernel.log_lengthscale, np.log([0.5, 2.0]))
    np.testing.assert_allclose(kernel.variance, 3.0)
    np.testing.assert_allclose(kernel.lengthscale, [0.5, 2.0])


@ALL
@pytest.mark.parametrize("lengthscale", [0.7, [0.7, 1.2]])
def test_hyperparameter_gradients_are_finite_through_the_diagonal(name, lengthscale, getkey):
    X = _inputs(getkey(), 6, 2)
    X = np.concatenate([X, X[:2]])  # repeated points: r = 0 off the diagonal too

    @eqx.filter_grad
    def grad(kernel):
        return jnp.sum(kernel(X, X)) + jnp.sum(kernel.diagonal(X))

    g = grad(KERNELS[name](variance=1.3, lengthscale=lengthscale))
    assert np.all(np.isfinite(g.log_variance)) and np.all(np.isfinite(g.log_lengthscale))
    # d/d log_variance of sum(K) + sum(diag K) is that sum itself
    kernel = KERNELS[name](variance=1.3, lengthscale=lengthscale)
    np.testing.assert_allclose(
        g.log_variance, jnp.sum(kernel(X, X)) + jnp.sum(kernel.diagonal(X)), rtol=1e-12
    )


@ALL
def test_input_gradient_is_finite_at_coincident_points(name):
    kernel = KERNELS[name]()
    g = jax.grad(lambda x: kernel.evaluate(x, jnp.zeros(2)))(jnp.zeros(2))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variance": -1.0}, "variance"),
        ({"variance": 0.0}, "variance"),
        ({"lengthscale": 0.0}, "lengthscale"),
        ({"lengthscale": [1.0, -2.0]}, "lengthscale"),
        ({"lengthscale": np.nan}, "lengthscale"),
        ({"variance": np.inf}, "variance"),
        ({"lengthscale": np.ones((2, 2))}, "lengthscale"),
        ({"variance": [1.0, 2.0]}, "variance"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SquaredExponential(**kwargs)


def test_mismatched_input_dimensions_raise(getkey):
    with pytest.raises(ValueError, match="X1"):
        SquaredExponential()(_inputs(getkey(), 3, 2), _inputs(getkey(), 3, 3))


def test_as_2d_inputs():
    assert as_2d_inputs(jnp.arange(4.0)).shape == (4, 1)
    assert as_2d_inputs(jnp.ones((4, 3))).shape == (4, 3)
    with pytest.raises(ValueError, match="X"):
        as_2d_inputs(jnp.ones((2, 2, 2)))


def test_jit_and_traced_construction(getkey):
    X = _inputs(getkey(), 5, 1)

    @jax.jit
    def gram(log_ell):
        return Matern32(lengthscale=jnp.exp(log_ell))(X, X)

    np.testing.assert_allclose(gram(jnp.log(0.6)), Matern32(lengthscale=0.6)(X, X), rtol=1e-12)


@ALL
def test_float32(name, getkey):
    with jax.enable_x64(False):
        X = jnp.asarray(_inputs(getkey(), 30, 2), jnp.float32)
        kernel = KERNELS[name](variance=2.0, lengthscale=[0.3, 1.5])
        K = kernel(X, X)
        g = eqx.filter_grad(lambda k: jnp.sum(k(X, X)))(kernel)
        assert K.dtype == jnp.float32 and kernel.log_variance.dtype == jnp.float32
        assert np.all(np.isfinite(K)) and np.all(np.isfinite(g.log_lengthscale))


def _naive_gram(name, log_variance, log_lengthscale, X1, X2):
    """The Gram matrix from broadcast differences, differentiated by plain autodiff: the
    independent reference for the kernels' own derivative rule (`squared_distances`)."""
    scaled = (X1[:, None, :] - X2[None, :, :]) / jnp.exp(log_lengthscale)[None, None, :]
    r2 = jnp.sum(scaled**2, axis=-1)
    r = jnp.sqrt(r2)
    profile = {
        "se": jnp.exp(-0.5 * r2),
        "m12": jnp.exp(-r),
        "m32": (1 + jnp.sqrt(3.0) * r) * jnp.exp(-jnp.sqrt(3.0) * r),
        "m52": (1 + jnp.sqrt(5.0) * r + 5 * r2 / 3) * jnp.exp(-jnp.sqrt(5.0) * r),
    }[name]
    return jnp.exp(log_variance) * profile


@ALL
def test_gram_derivatives_match_plain_autodiff(name, getkey):
    """Reverse and forward mode, first and second order, in the hyperparameters and both
    inputs (points kept apart, where the reference's sqrt is differentiable)."""
    X1, X2 = _inputs(getkey(), 9, 3), _inputs(getkey(), 6, 3) + 0.1
    weights = jax.random.normal(getkey(), (9, 6))
    theta = (jnp.asarray(0.3), jnp.log(jnp.array([0.6, 1.4, 2.0])), jnp.asarray(X1), X2)

    def ours(log_variance, log_lengthscale, A, B):
        kernel = KERNELS[name](jnp.exp(log_variance), jnp.exp(log_lengthscale))
        return jnp.sum(weights * kernel(A, B))

    def reference(*args):
        return jnp.sum(weights * _naive_gram(name, *args))

    args = tuple(range(4))
    for ours_d, ref_d in [
        (jax.grad(ours, args), jax.grad(reference, args)),
        (jax.jacfwd(ours, args), jax.jacfwd(reference, args)),
        (jax.hessian(ours, 1), jax.hessian(reference, 1)),
        (jax.jacfwd(jax.grad(ours, 2), 3), jax.jacfwd(jax.grad(reference, 2), 3)),
    ]:
        mine, truth = jax.jit(ours_d)(*theta), jax.jit(ref_d)(*theta)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(truth), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_squared_distances_are_exact_at_coincident_and_far_points():
    from ngvi.kernels import squared_distances

    A = jnp.array([[1e8, 1.0], [3.0, -2.0]])
    r2 = squared_distances(A, A)
    # the expansion |a|^2 + |b|^2 - 2 a.b would lose the 1e-16-relative difference at 1e8
    np.testing.assert_array_equal(np.diag(r2), [0.0, 0.0])
    np.testing.assert_allclose(r2[0, 1], (1e8 - 3.0) ** 2 + 9.0, rtol=1e-15)


@ALL
def test_repeated_rows_have_exact_zero_distance_and_a_right_gradient_under_jit(name, getkey):
    """Under `jit`, XLA fused `x s - x s` into a multiply-add whose result is the rounding
    error of `x s` (r2 ~ 1e-32, not 0), and a Matérn `sqrt` turned the derivative's rounding
    into a lengthscale gradient of 258.6 where the truth was -1.18 inside a fit (the fit-level
    reproducer: `test_hyperparameters_em.py::test_matern12_maximises_...`). The reference
    here: central differences of the Gram matrix in the log-hyperparameters."""
    from ngvi.kernels import squared_distances

    X = _inputs(getkey(), 6, 2)
    X = jnp.concatenate([X, X])  # every row twice
    weights = jax.random.normal(getkey(), (12, 12))

    def total(theta):
        kernel = KERNELS[name](jnp.exp(theta[0]), jnp.exp(theta[1:]))
        return jnp.sum(weights * kernel(X, X))

    theta = jnp.array([0.3, np.log(0.6), np.log(1.4)])
    gradient = jax.jit(jax.grad(total))(theta)
    step = 1e-6
    differences = [
        (total(theta + step * e) - total(theta - step * e)) / (2 * step) for e in np.eye(3)
    ]
    np.testing.assert_allclose(gradient, differences, rtol=1e-6, atol=1e-8)
    r2 = jax.jit(lambda X, s: squared_distances(X, X, s))(X, jnp.array([0.7, 1.9]))
    assert np.all(np.diag(r2) == 0.0) and np.all(np.diag(r2, 6) == 0.0)


@ALL
def test_lengthscale_gradient_ignores_an_input_offset(name, getkey):
    """Reproducer: the derivative's expansion `|a|^2 + |b|^2 - 2 a.b` rounds absolutely, so
    inputs at 1e8 (timestamps) got a lengthscale gradient of -76 against -5.19 at 0."""
    X = np.sort(np.asarray(_inputs(getkey(), 20, 1)) * 3.0, axis=0)
    weights = jax.random.normal(getkey(), (20, 20))

    def gradient(X):
        def total(log_lengthscale):
            return jnp.sum(weights * KERNELS[name](1.0, jnp.exp(log_lengthscale))(X, X))

        return jax.jit(jax.grad(total))(jnp.asarray(0.2))

    near, far = gradient(jnp.asarray(X)), gradient(jnp.asarray(X + 1e8))
    # the inputs at 1e8 hold their differences to 1.5e-8 (their own rounding), no worse
    np.testing.assert_allclose(far, near, rtol=1e-6)


@ALL
def test_gram_input_gradient_is_finite_at_coincident_points(name, getkey):
    X = _inputs(getkey(), 4, 2)
    g = jax.grad(lambda A: jnp.sum(KERNELS[name](lengthscale=[0.5, 2.0])(A, X)))(X)
    assert np.all(np.isfinite(g))


def test_sum_and_product_gram_match_pairwise_evaluation(getkey):
    X1, X2 = _inputs(getkey(), 5, 2), _inputs(getkey(), 4, 2)
    a, b = SquaredExponential(1.5, [0.5, 2.0]), Matern32(0.7, 1.3)
    for kernel in (a + b, a * b, (a + b) * a):
        pairwise = jax.vmap(jax.vmap(kernel.evaluate, (None, 0)), (0, None))(X1, X2)
        np.testing.assert_allclose(kernel(X1, X2), pairwise, rtol=1e-13)


@ALL
def test_a_lengthscale_beyond_floating_point_switches_its_feature_off(name, getkey):
    """Reproducer: EM on sonar from scikit-learn's hyperparameters (lengthscales up to 1e5)
    stepped a log-lengthscale past 709, where `x / exp(log_ell)` is `x / inf` with derivative
    `-x inf / inf^2 = NaN`, and the fit failed. The feature is switched off instead: the Gram
    matrix is that of the other features and the derivative is 0."""
    X = _inputs(getkey(), 6, 2)
    kernel = eqx.tree_at(
        lambda k: k.log_lengthscale,
        KERNELS[name](1.3, [0.7, 1.0]),
        jnp.array([jnp.log(0.7), 750.0]),
    )
    only_first = KERNELS[name](1.3, 0.7)(X[:, :1], X[:, :1])
    np.testing.assert_allclose(kernel(X, X), only_first, rtol=1e-14)
    grad = eqx.filter_grad(lambda k: jnp.sum(k(X, X)) + k.evaluate(X[0], X[1]))(kernel)
    assert np.all(np.isfinite(grad.log_lengthscale)) and grad.log_lengthscale[1] == 0.0
