"""Gaussian algebra in natural parameters, and the public functional primitives.

Convention (used everywhere in ngvi): a Gaussian `N(mu, Sigma)` has natural parameters

    eta1 = Sigma^-1 mu,        eta2 = -1/2 Sigma^-1,        precision Lambda = -2 eta2.

Derivatives are of the log *likelihood* `log p(y | f)`: gradient `g`, Hessian `H` (negative
semi-definite when the likelihood is log-concave). Every conversion goes through a Cholesky
factor and triangular solves; no function here calls `inv`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray


def _cholesky_solve(precision: Float[Array, "D D"], rhs: Array) -> Array:
    factor = jnp.linalg.cholesky(precision)
    return jsl.cho_solve((factor, True), rhs)


def natural_to_moments(
    eta1: Float[Array, " D"], eta2: Float[Array, "D D"]
) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
    """`(eta1, eta2) -> (mu, Sigma)` with `Sigma = (-2 eta2)^-1`, `mu = Sigma eta1`.

    Both come from one Cholesky factor of the precision `-2 eta2` and triangular solves.
    """
    factor = jnp.linalg.cholesky(-2.0 * eta2)
    mean = jsl.cho_solve((factor, True), eta1)
    covariance = jsl.cho_solve((factor, True), jnp.eye(eta1.shape[0], dtype=eta1.dtype))
    return mean, covariance


def moments_to_natural(
    mean: Float[Array, " D"], covariance: Float[Array, "D D"]
) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
    """`(mu, Sigma) -> (eta1, eta2)` with `eta1 = Sigma^-1 mu`, `eta2 = -1/2 Sigma^-1`."""
    precision = _cholesky_solve(covariance, jnp.eye(mean.shape[0], dtype=mean.dtype))
    precision = 0.5 * (precision + precision.T)
    return precision @ mean, -0.5 * precision


def likelihood_site(mean: Array, expected_grad: Array, expected_hess: Array) -> tuple[Array, Array]:
    """The Gaussian site that stands in for the likelihood at `q` (DESIGN section 2).

        lam1 = E_q[g] - E_q[H] mu,        lam2 = 1/2 E_q[H]

    `expected_hess` has the shape of `expected_grad` (elementwise: diagonal sites) or one more
    trailing axis (a matrix per leading index: `(..., C)` gradients, `(..., C, C)` Hessians).
    """
    if expected_hess.shape == expected_grad.shape:
        return expected_grad - expected_hess * mean, 0.5 * expected_hess
    product = jnp.einsum("...ij,...j->...i", expected_hess, mean)
    return expected_grad - product, 0.5 * expected_hess


def damped_natural_update(eta, eta_target, lr):
    """One natural-gradient step of the ELBO in natural parameters (Khan & Lin, 2017):

        eta_new = (1 - lr) * eta + lr * eta_target,   eta_target = eta_prior + site_target

    `eta` and `eta_target` are matching pytrees (e.g. `(eta1, eta2)` or site parameters); with
    `lr = 1` a Gaussian likelihood lands on the exact posterior in one step.
    """
    return jax.tree.map(lambda old, new: (1.0 - lr) * old + lr * new, eta, eta_target)


def newton_update(
    mean: Float[Array, " D"],
    precision: Float[Array, "D D"],
    grad: Float[Array, " D"],
    hess: Float[Array, "D D"],
    lr,
) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
    """Damped Newton step on the log joint, in the BLR's "delta" form (Khan & Rue 2023, 4.1):

        Lambda_new = (1 - lr) Lambda - lr * H,        mu_new = mu + lr * Lambda_new^-1 g

    where `g`, `H` are the gradient and Hessian of `log p(y, w)` (likelihood *and* prior) at
    the mean. Iterated with `lr = 1` this is Newton's method; its fixed point is the Laplace
    approximation, not the variational optimum.
    """
    new_precision = (1.0 - lr) * precision - lr * hess
    new_mean = mean + lr * _cholesky_solve(new_precision, grad)
    return new_mean, new_precision


def blr_full_update(
    mean: Float[Array, " D"],
    precision: Float[Array, "D D"],
    expected_grad: Float[Array, " D"],
    expected_hess: Float[Array, "D D"],
    prior_mean: Float[Array, " D"],
    prior_precision: Float[Array, "D D"],
    lr,
) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
    """Bayesian learning rule for a full-covariance Gaussian (Khan & Rue 2023, eq. 11):

        g_bar = E_q[g] - Lambda_0 (mu - mu_0),        H_bar = E_q[H] - Lambda_0
        Lambda_new = (1 - lr) Lambda - lr * H_bar,     mu_new = mu + lr * Lambda_new^-1 g_bar

    `E_q[g]`, `E_q[H]` are expectations of the log-likelihood's derivatives (by Monte Carlo or
    quadrature); the prior `N(mu_0, Lambda_0^-1)` enters explicitly. This is exactly
    `damped_natural_update` written in mean/precision coordinates.
    """
    grad = expected_grad - prior_precision @ (mean - prior_mean)
    hess = expected_hess - prior_precision
    return newton_update(mean, precision, grad, hess, lr)


def blr_diag_update(
    mean: Float[Array, " D"],
    precision: Float[Array, " D"],
    expected_grad: Float[Array, " D"],
    expected_hess_diag: Float[Array, " D"],
    prior_mean: Float[Array, " D"],
    prior_precision: Float[Array, "D D"] | Float[Array, " D"],
    lr,
) -> tuple[Float[Array, " D"], Float[Array, " D"]]:
    """Bayesian learning rule for a diagonal Gaussian `N(mu, diag(s)^-1)`:

        g_bar = E_q[g] - Lambda_0 (mu - mu_0),        h_bar = diag(E_q[H]) - diag(Lambda_0)
        s_new = (1 - lr) s - lr * h_bar,               mu_new = mu + lr * g_bar / s_new

    the natural gradient of the ELBO restricted to the mean-field family. `prior_precision`
    is a matrix or, for a diagonal prior, the vector of its diagonal.
    """
    if prior_precision.ndim == 1:
        grad = expected_grad - prior_precision * (mean - prior_mean)
        hess = expected_hess_diag - prior_precision
    else:
        grad = expected_grad - prior_precision @ (mean - prior_mean)
        hess = expected_hess_diag - jnp.diagonal(prior_precision)
    new_precision = (1.0 - lr) * precision - lr * hess
    return mean + lr * grad / new_precision, new_precision


def gauss_newton_precision(
    jacobian: Float[Array, "n D"], noise_variance: Float[Array, " n"] | None = None
) -> lx.AbstractLinearOperator:
    """Gauss-Newton curvature `J^T R^-1 J` as a positive semi-definite lineax operator.

    `J` is the Jacobian of the model output with respect to the parameters and `R` the
    (diagonal) conditional variance of `y` given the output; `R = I` when omitted. The
    negative log-likelihood Hessian is replaced by this PSD matrix, so `-J^T R^-1 J` is the
    `E[H]` a Gauss-Newton step uses. When `J` is wide (`n < D`) the operator stays in the
    low-rank composed form `J^T (R^-1 J)` and is never materialised as a `D x D` matrix.
    """
    weighted = jacobian if noise_variance is None else jacobian / noise_variance[:, None]
    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
    n, dim = jacobian.shape
    if n < dim:
        left = lx.MatrixLinearOperator(jacobian.T)
        right = lx.MatrixLinearOperator(weighted)
        return lx.TaggedLinearOperator(left @ right, tags)
    return lx.MatrixLinearOperator(jacobian.T @ weighted, tags)


def riemannian_psd_correction(precision: Array, target_precision: Array, lr) -> Array:
    """Precision update that stays positive definite for any `lr` (Lin, Schmidt & Khan 2020):

        S_new = S - lr * G + lr^2 / 2 * G S^-1 G,        G = S - S_target

    `S` must be positive definite; `S_target` may be indefinite. For 1-D inputs the matrices
    are diagonal and the update is elementwise,
    `s_new = ((s - lr g)^2 + s^2) / (2 s) > 0`.
    """
    difference = precision - target_precision
    if precision.ndim == 1:
        return precision - lr * difference + 0.5 * lr**2 * difference**2 / precision
    correction = difference @ _cholesky_solve(precision, difference)
    new = precision - lr * difference + 0.5 * lr**2 * correction
    return 0.5 * (new + new.T)


def gaussian_entropy(scale_tril: Float[Array, "D D"]) -> Float[Array, ""]:
    """Entropy `1/2 log|2 pi e Sigma|` from a lower Cholesky factor of `Sigma`."""
    dim = scale_tril.shape[0]
    return 0.5 * dim * (1.0 + jnp.log(2.0 * jnp.pi)) + jnp.sum(
        jnp.log(jnp.abs(jnp.diagonal(scale_tril)))
    )


def gaussian_kl(
    mean: Float[Array, " D"],
    scale_tril: Float[Array, "D D"],
    prior_mean: Float[Array, " D"],
    prior_scale_tril: Float[Array, "D D"],
) -> Float[Array, ""]:
    """`KL(N(mu, S S^T) || N(mu_0, S_0 S_0^T))` from Cholesky factors:

    1/2 [ ||S_0^-1 S||_F^2 + ||S_0^-1 (mu - mu_0)||^2 - D ] + sum log|diag S_0| - sum log|diag S|
    """
    scaled = jsl.solve_triangular(prior_scale_tril, scale_tril, lower=True)
    offset = jsl.solve_triangular(prior_scale_tril, mean - prior_mean, lower=True)
    log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(prior_scale_tril)))) - jnp.sum(
        jnp.log(jnp.abs(jnp.diagonal(scale_tril)))
    )
    return 0.5 * (jnp.sum(scaled**2) + jnp.sum(offset**2) - mean.shape[0]) + log_det


def variational_elbo_gaussian(
    y: Float[Array, " n"],
    mean: Float[Array, " n"],
    variance: Float[Array, " n"],
    noise_variance,
    kl: Float[Array, ""],
) -> Float[Array, ""]:
    """Closed-form ELBO for a Gaussian likelihood `y_i ~ N(f_i, s2)`:

        ELBO = sum_i [ -1/2 log(2 pi s2) - ((y_i - mu_i)^2 + v_i) / (2 s2) ] - KL(q || p)

    with `mu_i`, `v_i` the marginal mean and variance of `f_i` under `q`. At the exact posterior
    it equals the log marginal likelihood.
    """
    expected = -0.5 * jnp.log(2.0 * jnp.pi * noise_variance) - ((y - mean) ** 2 + variance) / (
        2.0 * noise_variance
    )
    return jnp.sum(expected) - kl


def variational_elbo_mc(
    log_likelihood: Callable[[Float[Array, " D"]], Float[Array, ""]],
    mean: Float[Array, " D"],
    scale_tril: Float[Array, "D D"],
    kl: Float[Array, ""],
    key: PRNGKeyArray,
    num_samples: int = 64,
) -> Float[Array, ""]:
    """Monte Carlo ELBO with reparameterised samples `w_s = mu + S eps_s`, `eps_s ~ N(0, I)`:

        ELBO ~= 1/S sum_s log p(y | w_s) - KL(q || p)

    Unbiased, and differentiable in `(mu, S)`. Use the exact ELBO where one exists; this is
    for likelihoods without quadrature (non-factorising, weight-space models).
    """
    noise = jax.random.normal(key, (num_samples, mean.shape[0]), dtype=mean.dtype)
    samples = mean[None, :] + noise @ scale_tril.T
    return jnp.mean(jax.vmap(log_likelihood)(samples)) - kl
