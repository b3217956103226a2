"""Triangular inverses by matrix products."""

import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float

INVERSE_LEAF = 128


def lower_inverse(factor: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """`L^-1` for lower-triangular `L` by recursive 2 x 2 blocking (Du Croz & Higham 1992):

        [[A, 0], [M, D]]^-1 = [[A^-1, 0], [-D^-1 M A^-1, D^-1]]

    All `O(n^3)` work is in matrix products; blocks of at most `INVERSE_LEAF` rows use a
    triangular solve against the identity.
    """
    n = factor.shape[0]
    if n <= INVERSE_LEAF:
        return jsl.solve_triangular(factor, jnp.eye(n, dtype=factor.dtype), lower=True)
    half = n // 2
    upper = lower_inverse(factor[:half, :half])
    lower = lower_inverse(factor[half:, half:])
    corner = -(lower @ (factor[half:, :half] @ upper))
    zeros = jnp.zeros((half, n - half), factor.dtype)
    return jnp.block([[upper, zeros], [corner, lower]])
