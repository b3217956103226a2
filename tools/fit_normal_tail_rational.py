"""Fit the rational approximation behind `ngvi.likelihoods.normal_tail` and print its
coefficients.

The function is G(y) = (u + K) (r(-u) - u) with y = (u - K) / (u + K), u >= 0, r the inverse
Mills ratio phi / Phi: analytic on [-1, 1], 1 at y = 1. P / Q of degrees (n, n), q_0 = 1, is
fitted by linearised least squares on Chebyshev nodes (minimise (P - G Q) / G), reweighted by
1 / |Q| from the previous pass (Loeb's iteration, towards the relative minimax fit), in
50-digit arithmetic. Its largest relative error on a 4001-point grid and the smallest Q are
printed with the coefficients.

Needs mpmath (`pip install mpmath`); not a dependency of ngvi. Run:
    python tools/fit_normal_tail_rational.py            # K = 4, degree 10
"""

import argparse

import mpmath as mp


def lower_gap(u):
    """r(-u) - u = phi(u) / Phi(-u) - u in working precision."""
    mills = mp.sqrt(mp.pi / 2) * mp.erfc(u / mp.sqrt(2)) * mp.exp(u * u / 2)
    return 1 / mills - u


def scaled_gap(y, K):
    if y == 1:
        return mp.mpf(1)
    u = K * (1 + y) / (1 - y)
    return (u + K) * lower_gap(u)


def fit(K, degree, nodes=300, passes=4):
    ys = [mp.cos(mp.pi * (j + mp.mpf(1) / 2) / nodes) for j in range(nodes)]
    gs = [scaled_gap(y, K) for y in ys]
    weights = [mp.mpf(1)] * nodes
    for _ in range(passes):
        A, b = mp.matrix(nodes, 2 * degree + 1), mp.matrix(nodes, 1)
        for i, (y, g) in enumerate(zip(ys, gs, strict=True)):
            scale = weights[i] / g
            for k in range(degree + 1):
                A[i, k] = scale * y**k
            for k in range(1, degree + 1):
                A[i, degree + k] = -scale * g * y**k
            b[i] = scale * g
        x = mp.qr_solve(A, b)[0]
        p = [x[k] for k in range(degree + 1)]
        q = [mp.mpf(1)] + [x[degree + k] for k in range(1, degree + 1)]
        weights = [1 / abs(mp.polyval(q[::-1], y)) for y in ys]
    grid = [mp.mpf(-1) + mp.mpf(j) / 2000 for j in range(4001)]
    error = max(
        abs(mp.polyval(p[::-1], y) / mp.polyval(q[::-1], y) / scaled_gap(y, K) - 1) for y in grid
    )
    smallest_q = min(mp.polyval(q[::-1], y) for y in grid)
    return p, q, error, smallest_q


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=float, default=4.0)
    parser.add_argument("--degree", type=int, default=10)
    args = parser.parse_args()
    mp.mp.dps = 50
    p, q, error, smallest_q = fit(mp.mpf(args.K), args.degree)
    print(
        f"# K = {args.K:g}, degree {args.degree}: max relative error {float(error):.2e}, "
        f"min Q {float(smallest_q):.3f}"
    )
    print("_NUMERATOR = (\n" + "".join(f"    {float(c)!r},\n" for c in p) + ")")
    print("_DENOMINATOR = (\n" + "".join(f"    {float(c)!r},\n" for c in q) + ")")


if __name__ == "__main__":
    main()
