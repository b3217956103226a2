"""A 26-class sparse GP classifier on UCI Letter Recognition (20,000 x 16), by minibatch
natural gradients on one variational posterior over 26 latent GPs.

`SparseModel` with M = 256 k-means inducing inputs shared by the 26 latents, a softmax
likelihood (Monte Carlo expectations with common random numbers), one ARD squared-exponential
kernel for every latent; `NaturalGradient()` with its default minibatch schedule
(`1 / (1 + epochs)`) on batches of 1,024 points, and Adam on the kernel and the inducing inputs.
Prints the held-out accuracy and negative log predictive density (NLPD) on 4,000 test points and
the full-data ELBO per point with its Monte Carlo standard error; writes the ELBO trace to
`--out`.

    python examples/letter_sparse.py            # 16,000 training points, several minutes
    python examples/letter_sparse.py --quick    # 2,000 points, M = 32, 32 Monte Carlo samples
"""

import argparse
import time
from pathlib import Path

import jax
import numpy as np
import optax
from sparse_skin import plot_elbo_trace  # examples/sparse_skin.py, next to this one

import ngvi

NUM_CLASSES = 26


def fit_sparse(X, y, num_steps: int, num_inducing=256, num_mc_samples=256, seed=0):
    """Fit the sparse softmax GP to standardised inputs `X` and labels `y` in 0..25; return
    the `FitResult` (its `model` carries the learned kernel and inducing inputs)."""
    jax.config.update("jax_enable_x64", True)
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=np.full(X.shape[1], 4.0))
    model = ngvi.SparseModel(
        ngvi.GPPrior(kernel, jitter=1e-6),
        ngvi.likelihoods.Softmax(NUM_CLASSES, num_mc_samples=num_mc_samples),
        X,
        np.asarray(y, dtype=float),
        inducing=num_inducing,
        seed=seed,
    )
    learn = ngvi.LearnHyperparameters(optax.adam(1e-2))
    return ngvi.fit(
        model,
        ngvi.NaturalGradient(),
        num_steps,
        batch_size=min(1024, len(y)),
        learn=learn,
        key=jax.random.PRNGKey(seed),
        progress=False,
    )


def class_probabilities(result, X_new, chunk: int = 500) -> np.ndarray:
    """`(n, 26)` predictive class probabilities `E_q[softmax(f*)]`, `chunk` rows at a time
    (the Monte Carlo average holds `4 * num_mc_samples` draws per row and class)."""
    chunks = [
        np.asarray(ngvi.predict(result.model, result.q, X_new[i : i + chunk]).mean)
        for i in range(0, len(X_new), chunk)
    ]
    return np.concatenate(chunks)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="subsample for a fast run")
    parser.add_argument("--out", default="out/letter", help="folder for the plot")
    parser.add_argument("--num-steps", type=int, default=None)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    X, y, letters = ngvi.datasets.letter()
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[4000:], order[:4000]
    if args.quick:
        train, test = train[:2000], test[:1000]
    centre, spread = X[train].mean(0), X[train].std(0)
    X = (X - centre) / spread
    num_inducing = 32 if args.quick else 256
    num_steps = args.num_steps or (60 if args.quick else 1500)
    num_mc_samples = 32 if args.quick else 256

    start = time.perf_counter()
    result = fit_sparse(X[train], y[train], num_steps, num_inducing, num_mc_samples)
    seconds = time.perf_counter() - start
    p = class_probabilities(result, X[test])
    labels = y[test].astype(int)
    accuracy = float(np.mean(np.argmax(p, 1) == labels))
    nlpd = float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1.0))))
    per_point = float(result.elbo) / len(train)
    error = float(result.elbo_error) / len(train)
    print(f"training points: {len(train)}, classes: {len(letters)}, inducing: {num_inducing}")
    print(f"steps: {result.num_steps} of batch 1024 in {seconds:.1f} s ({result.message})")
    print(f"full-data ELBO per point: {per_point:.5f} (Monte Carlo standard error {error:.1e})")
    print(f"held-out accuracy: {accuracy:.4f}, NLPD: {nlpd:.4f} on {len(test)} letters")
    print(f"chance: accuracy {1 / len(letters):.4f}, NLPD {np.log(len(letters)):.4f}")

    title = "letter: 26 classes, minibatch natural gradients"
    plot_elbo_trace(result, len(train), Path(args.out) / "letter_elbo.png", title, (0.1, 0.05))
    return {"result": result, "accuracy": accuracy, "nlpd": nlpd}


if __name__ == "__main__":
    main()
