r"""Multi-class likelihoods: softmax and robust-max, labels $y \in \{0, \dots, C-1\}$."""

from typing import ClassVar

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr
from jaxtyping import Array, ArrayLike, Float

from .._validation import check_finite
from ..quadrature import _hermite_rule, sobol_normal
from .multi import AbstractMultiLatentLikelihood, Matrix


def _class_labels(y: ArrayLike, num_classes: int, name: str) -> np.ndarray:
    y = check_finite(y, "y")
    flat = y.ravel()
    bad = np.flatnonzero((flat < 0) | (flat >= num_classes) | (flat != np.round(flat)))
    if bad.size:
        raise ValueError(
            f"{name} labels must be integers 0..{num_classes - 1}; found {flat[bad[0]]:g} at "
            f"index {int(bad[0])}."
        )
    return y


class _Categorical(AbstractMultiLatentLikelihood):
    num_classes: int = eqx.field(static=True)

    def __check_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {self.num_classes}.")

    @property
    def num_latent(self) -> int:
        return self.num_classes

    def prepare_targets(self, y: ArrayLike) -> np.ndarray:
        return _class_labels(y, self.num_classes, type(self).__name__)

    def predictive_moments(self, mean: Matrix, variance: Matrix) -> tuple[Matrix, Matrix]:
        """Class probabilities `(m, C)` (each row sums to 1) and their Bernoulli variances."""
        probabilities = self.class_probabilities(mean, variance)
        return probabilities, probabilities * (1.0 - probabilities)


class Softmax(_Categorical):
    r"""$\log p(y \mid f) = f_y - \log \sum_c e^{f_c}$ over `num_classes` latent functions.

    Its expectations have no closed form: `E[log p]`, `E[g] = E[e_y - \pi(f)]` and the diagonal
    curvature `E[-\pi_c (1 - \pi_c)]` are Monte Carlo averages with common random numbers
    (`num_mc_samples`, `mc_seed`); `fit` reports the ELBO's standard error. Predictive class
    probabilities `E[\pi(f)]` are quasi-Monte Carlo (`class_probabilities`), with an error
    estimate that `ngvi.predict` warns about above `1e-3`.
    """

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        f = jnp.asarray(f)
        index = jnp.asarray(y).astype(jnp.int32)[..., None]
        picked = jnp.take_along_axis(f, index, axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(f, axis=-1)

    def derivatives(self, f: Matrix, y: ArrayLike):
        probabilities = jax.nn.softmax(f, axis=-1)
        onehot = jax.nn.one_hot(jnp.asarray(y).astype(jnp.int32), self.num_classes, dtype=f.dtype)
        return self.log_prob(f, y), onehot - probabilities, -probabilities * (1 - probabilities)

    def full_derivatives(self, f: Matrix, y: ArrayLike):
        """`H = -(diag(pi) - pi pi^T)`, `pi = softmax(f)`."""
        log_p, grad, _ = self.derivatives(f, y)
        probabilities = jax.nn.softmax(f, axis=-1)
        outer = probabilities[:, :, None] * probabilities[:, None, :]
        hess = outer - jnp.einsum("nc,cd->ncd", probabilities, jnp.eye(f.shape[-1], dtype=f.dtype))
        return log_p, grad, hess

    def _half_estimates(self, mean: Matrix, variance: Matrix) -> Float[Array, "n 2 C"]:
        """`E[softmax(f)]` per row from each of two independently scrambled Sobol' sequences
        (`ngvi.quadrature.sobol_normal`, seeds `mc_seed` and `mc_seed + 1`) of `2^k >= 2
        num_mc_samples` points. Every row shares the points, so a row's probabilities do not
        depend on the other rows or their order; rows go in blocks of 256 (memory `O(256 S
        C)` for any `n`). A full covariance per row `(n, C, C)` (the coupled family) enters
        through its symmetric square root."""
        half = 1 << max(0, int(2 * self.num_mc_samples - 1).bit_length())
        points = [sobol_normal(half, mean.shape[-1], self.mc_seed + k) for k in (0, 1)]
        noise = jnp.asarray(np.concatenate(points), mean.dtype)

        def one_row(row):
            m, v = row
            if v.ndim == 2:
                values, vectors = jnp.linalg.eigh(0.5 * (v + v.T))
                root = (vectors * jnp.sqrt(jnp.maximum(values, 0.0))[None, :]) @ vectors.T
                samples = m[None, :] + noise @ root
            else:
                samples = m[None, :] + jnp.sqrt(jnp.maximum(v, 0.0))[None, :] * noise
            probabilities = jax.nn.softmax(samples, axis=-1)
            return jnp.mean(probabilities.reshape(2, half, -1), axis=1)

        return jax.lax.map(one_row, (mean, variance), batch_size=256)

    def class_probabilities(self, mean: Matrix, variance: Matrix) -> Matrix:
        """`E[softmax(f)]` per row: the mean of the two quasi-Monte Carlo estimates of
        `_half_estimates` (`2^(k+1)` points in all, 1,024 by default)."""
        return jnp.mean(self._half_estimates(mean, variance), axis=1)

    def predictive_error(self, mean: Matrix, variance: Matrix) -> Array:
        """Half the difference of the two independently scrambled estimates (largest over the
        classes), which is distributed as the error of their mean."""
        halves = self._half_estimates(mean, variance)
        return 0.5 * jnp.max(jnp.abs(halves[:, 0] - halves[:, 1]), axis=-1)

    def accuracy_advice(self, error: float) -> str:
        return (
            f"Softmax's quasi-Monte Carlo class probabilities may be off by up to {error:.2g} "
            "(half the difference of two independently scrambled estimates): raise the "
            "likelihood's `num_mc_samples` (the points double with it)."
        )

    def distribution(self, f: ArrayLike) -> distrax.Distribution:
        return distrax.Categorical(logits=f)


class RobustMax(_Categorical):
    r"""The robust-max likelihood (Girolami & Rogers 2006; Hernandez-Lobato et al. 2011):

    $$p(y \mid f) = 1 - \epsilon \text{ if } y = \arg\max_c f_c, \quad
    \frac{\epsilon}{C - 1} \text{ otherwise},$$

    which tolerates a share `epsilon` of mislabelled points. Its expectation is exact up to a
    1-D Gauss-Hermite quadrature of the probability that class $y$ wins:

    $$P(y = \arg\max f) = \mathbb{E}_{x \sim \mathcal N(0, 1)}
    \Big[\prod_{c \ne y} \Phi\Big(\frac{m_y + \sqrt{v_y} x - m_c}{\sqrt{v_c}}\Big)\Big],$$

    $\mathbb{E}_q[\log p] = P \log(1 - \epsilon) + (1 - P)\log\frac{\epsilon}{C-1}$; its
    gradient and curvature follow by autodiff.

    The curvature of the labelled class, `2 d/dv_y E_q[log p]`, is positive near the prior (a
    wider score wins more often), so the natural-gradient target precision is indefinite there
    and backoff and retreat shorten the first steps. Use the sparse model and
    `NaturalGradient(lr=0.5)`, which converges (linearly); with `lr = 1` the steps keep
    overshooting and `fit` does not report convergence.
    """

    epsilon: float = eqx.field(default=1e-3, static=True)
    differentiable: ClassVar[bool] = False  # piecewise constant: zero gradients at samples

    def __check_init__(self):
        super().__check_init__()
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"`epsilon` must be in (0, 1), got {self.epsilon}.")

    def _logs(self):
        return jnp.log1p(-self.epsilon), jnp.log(self.epsilon / (self.num_classes - 1))

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        hit, miss = self._logs()
        wins = jnp.argmax(f, axis=-1) == jnp.asarray(y).astype(jnp.int32)
        return jnp.where(wins, hit, miss)

    def winning_probability(
        self, y, mean: Matrix, variance: Matrix, num_points: int | None = None
    ) -> Array:
        """`P(argmax f = y_i)` per point, by Gauss-Hermite quadrature over `f_y` with
        `num_points` nodes (default `num_quadrature_points`)."""
        nodes, weights = _hermite_rule(num_points or self.num_quadrature_points)
        nodes, weights = jnp.asarray(nodes, mean.dtype), jnp.asarray(weights, mean.dtype)
        tiny = jnp.finfo(mean.dtype).tiny ** 0.5
        std = jnp.sqrt(jnp.maximum(variance, tiny))
        labels = jnp.asarray(y).astype(jnp.int32)
        onehot = jax.nn.one_hot(labels, self.num_classes, dtype=mean.dtype)
        m_y = jnp.sum(mean * onehot, axis=-1)
        s_y = jnp.sum(std * onehot, axis=-1)
        f_y = m_y[:, None] + s_y[:, None] * nodes[None, :]  # (n, Q)
        z = (f_y[:, None, :] - mean[:, :, None]) / std[:, :, None]  # (n, C, Q)
        others = jnp.sum(log_ndtr(z) * (1.0 - onehot)[:, :, None], axis=1)  # (n, Q)
        return jnp.exp(others) @ weights

    def expected_log_prob(self, y, mean: Matrix, variance: Matrix) -> Array:
        hit, miss = self._logs()
        probability = self.winning_probability(y, mean, variance)
        return probability * hit + (1.0 - probability) * miss

    def quadrature_error(self, y, mean: Matrix, variance: Matrix) -> Array:
        """How much `expected_log_prob` moves per point when the nodes are doubled:
        `|P_2Q - P_Q| (log(1 - epsilon) - log(epsilon / (C - 1)))`. The rule misses the winning
        probability when one class's score is much wider than the others' (reproducer: class
        probabilities off by 0.03 and the ELBO by 4e-3 nats at 20 nodes, with `fit` silent)."""
        hit, miss = self._logs()
        coarse = self.winning_probability(y, mean, variance)
        fine = self.winning_probability(y, mean, variance, 2 * self.num_quadrature_points)
        return jnp.abs(fine - coarse) * (hit - miss)

    def class_probabilities(
        self, mean: Matrix, variance: Matrix, num_points: int | None = None
    ) -> Matrix:
        classes = jnp.arange(self.num_classes)
        wins = jax.vmap(
            lambda c: self.winning_probability(
                jnp.full(mean.shape[0], c), mean, variance, num_points
            )
        )(classes).T
        wins = wins / jnp.sum(wins, axis=1, keepdims=True)
        spread = self.epsilon / (self.num_classes - 1)
        return (1.0 - self.epsilon) * wins + spread * (1.0 - wins)

    def predictive_error(self, mean: Matrix, variance: Matrix) -> Array:
        """How much the class probabilities move per point when the nodes are doubled (the
        largest over the classes). Where one class's latent is much wider than another's the
        rule meets a near-step function: probabilities off by 0.05 at 20 nodes for latent
        variances 4 and 0.01 (the exact two-class value is `Phi(d / sqrt(v_0 + v_1))`)."""
        coarse = self.class_probabilities(mean, variance)
        fine = self.class_probabilities(mean, variance, 2 * self.num_quadrature_points)
        return jnp.max(jnp.abs(fine - coarse), axis=-1)

    def accuracy_advice(self, error: float) -> str:
        return (
            f"RobustMax's {self.num_quadrature_points}-node quadrature of the predictive "
            f"probabilities moves by up to {error:.2g} when its nodes are doubled (one latent's "
            "predictive variance is much wider than another's), so they are accurate only to "
            "about that: raise the likelihood's `num_quadrature_points`."
        )
