"""A sparse GP classifier on 245,057 pixels (UCI Skin Segmentation), by minibatch natural
gradients, with the kernel and the inducing inputs learned.

`SparseModel` with M = 256 k-means inducing inputs, a probit likelihood and an ARD
squared-exponential kernel; `NaturalGradient()` with its default minibatch schedule
(`1 / (1 + epochs)`) on batches of 1,024 points, and Adam on the kernel and the inducing inputs.
Prints the held-out accuracy and negative log predictive density (NLPD) on a 20% split and the
full-data ELBO per point; writes the ELBO trace to `--out`.

    python examples/sparse_skin.py            # all 196,045 training pixels, a few minutes
    python examples/sparse_skin.py --quick    # 20,000 pixels, M = 32, seconds
"""

import argparse
import time
from pathlib import Path

import jax
import numpy as np
import optax

import ngvi


def plot_elbo_trace(result, num_train: int, path: Path, title: str, margins) -> None:
    """Plot the minibatch ELBO per point of `result.history`, its moving average over 50 steps
    and the final full-data value to `path`; the y-axis runs from the 5th percentile less
    `margins[0]` to the maximum plus `margins[1]`. (`letter_sparse.py` uses it too.)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    trace = np.asarray(result.history.elbo) / num_train
    window = min(50, len(trace))
    smooth = np.convolve(trace, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(trace, alpha=0.3, label="minibatch estimate")
    ax.plot(np.arange(window - 1, len(trace)), smooth, label=f"{window}-step average")
    ax.axhline(float(result.elbo) / num_train, color="k", linestyle="--", label="final, full data")
    ax.set_ylim(np.percentile(trace, 5) - margins[0], trace.max() + margins[1])
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO per point")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="subsample for a fast run")
    parser.add_argument("--out", default="out/skin", help="folder for the plot")
    parser.add_argument("--num-steps", type=int, default=None)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    X, y = ngvi.datasets.skin()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    if args.quick:
        order = order[:20_000]
    cut = int(0.8 * len(order))
    train, test = order[:cut], order[cut:]
    centre, spread = X[train].mean(0), X[train].std(0)
    X = (X - centre) / spread
    num_inducing = 32 if args.quick else 256
    num_steps = args.num_steps or (300 if args.quick else 3000)

    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=np.ones(3))
    prior = ngvi.GPPrior(kernel, jitter=1e-6)
    model = ngvi.SparseModel(
        prior, ngvi.likelihoods.Probit(), X[train], y[train], inducing=num_inducing
    )
    learn = ngvi.LearnHyperparameters(optax.adam(1e-2))
    start = time.perf_counter()
    result = ngvi.fit(
        model, ngvi.NaturalGradient(), num_steps, batch_size=1024, learn=learn, progress=False
    )
    seconds = time.perf_counter() - start

    prediction = ngvi.predict(result.model, result.q, X[test])
    p = np.clip(np.asarray(prediction.mean), 1e-12, 1 - 1e-12)
    accuracy = float(np.mean((p > 0.5) == (y[test] > 0.5)))
    nlpd = float(-np.mean(np.where(y[test] > 0.5, np.log(p), np.log1p(-p))))
    print(f"training points: {len(train)}, inducing points: {num_inducing}")
    print(f"steps: {result.num_steps} of batch 1024 in {seconds:.1f} s ({result.message})")
    print(f"full-data ELBO per point: {float(result.elbo) / len(train):.5f}")
    print(f"held-out accuracy: {accuracy:.4f}, NLPD: {nlpd:.4f} on {len(test)} pixels")
    print(f"lengthscales: {np.round(np.asarray(result.model.prior.kernel.lengthscale), 3)}")

    title = "skin: minibatch natural gradients"
    plot_elbo_trace(result, len(train), Path(args.out) / "skin_elbo.png", title, (0.05, 0.02))
    return {"result": result, "accuracy": accuracy, "nlpd": nlpd}


if __name__ == "__main__":
    main()
