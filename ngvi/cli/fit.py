"""`ngvi fit`: fit a GP to a CSV file from the command line and report held-out metrics.

    ngvi fit data.csv --target label --likelihood probit --out results/
    python -m ngvi fit            # the bundled 400-point banana classification set

The CSV has a header row; the features are every other numeric column (text columns are
skipped). Features are standardised with the training split's mean and standard deviation, a
held-out test split is kept aside, and the model is a GP with an ARD squared-exponential kernel
whose hyperparameters are learned (`LearnHyperparameters`) while the posterior is fitted by the
chosen strategy. Results: metrics on stdout and in `metrics.json`, `predictions.csv` (every
row, with its split, the predictive and the latent mean and variance) and `plot.png` in `--out`.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .data import UsageError, read_csv, split
from .report import metrics, poisson_log_predictive, report, write_predictions

OPTIMIZERS = {
    "natgrad": "NaturalGradient",
    "adam": "Adam",
    "blr": "BLR",
    "gauss-newton": "GaussNewton",
}
LIKELIHOODS = {
    "probit": "Probit",
    "logit": "BernoulliLogit",
    "poisson": "Poisson",
    "gaussian": "Gaussian",
}


def add_fit_parser(commands) -> None:
    """Register the `fit` subcommand on an `argparse` subparsers object."""
    parser = commands.add_parser(
        "fit",
        help="fit a GP to a CSV file (default: the bundled banana data) and report metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("csv", nargs="?", help="CSV file with a header row (default: banana)")
    parser.add_argument("--target", help="name of the target column (default: the last column)")
    parser.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default="probit")
    parser.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        default="natgrad",
        help="strategy for the posterior (default: natgrad)",
    )
    parser.add_argument("--steps", type=int, default=300, help="fit steps (default: 300)")
    parser.add_argument(
        "--lr", type=float, default=None, help="step size of the strategy (default: its own)"
    )
    parser.add_argument(
        "--hyper-lr",
        type=float,
        default=0.05,
        help="Adam learning rate for the hyperparameters (default: 0.05)",
    )
    parser.add_argument(
        "--no-learn", action="store_true", help="keep the kernel and noise at their initial values"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="held-out share (default: 0.2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of the fit")
    parser.add_argument("--out", default="ngvi-fit-output", help="folder for predictions and plot")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_fit)


def _component(name: str, kind: str):
    import ngvi

    component = getattr(ngvi, name, None) or getattr(ngvi.likelihoods, name, None)
    if component is None:
        raise UsageError(f"the {kind} {name!r} is not available in this version of ngvi.")
    return component


def _optimizer(args):
    cls = _component(OPTIMIZERS[args.optimizer], "optimizer")
    return cls() if args.lr is None else cls(lr=args.lr)


def _build(args, X_train, y_train):
    """The model (on standardised inputs) and the target transform for a likelihood."""
    import jax.numpy as jnp

    import ngvi

    likelihood = _component(LIKELIHOODS[args.likelihood], "likelihood")()
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=jnp.ones(X_train.shape[1]))
    y_shift, y_scale, prior_mean = 0.0, 1.0, 0.0
    if args.likelihood == "gaussian":
        y_shift, y_scale = float(np.mean(y_train)), float(np.std(y_train)) or 1.0
        likelihood = ngvi.likelihoods.Gaussian(variance=0.1)
    elif args.likelihood == "poisson":
        prior_mean = float(np.log(np.mean(y_train) + 0.5))
    prior = ngvi.GPPrior(kernel, mean=prior_mean, jitter=1e-6)
    model = ngvi.Model(prior, likelihood, X_train, (y_train - y_shift) / y_scale)
    return model, y_shift, y_scale


def run_fit(args: argparse.Namespace) -> int:
    """The `fit` subcommand; returns the exit code (2 for bad input, 1 if the fit failed)."""
    import jax

    with jax.enable_x64(True):
        try:
            problem = _prepare(args)
        except ValueError as error:  # UsageError, and ngvi's own input checks
            message = " ".join(str(error).split())
            print(f"ngvi fit: error: {message}", file=sys.stderr)
            return 2
        return _fit_and_report(args, problem)


def _prepare(args) -> dict:
    """Everything user input can break, checked before anything is compiled."""
    import ngvi

    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}.")
    if not args.hyper_lr > 0:
        raise UsageError(f"--hyper-lr must be positive, got {args.hyper_lr}.")
    if args.csv is None:
        X, y = ngvi.datasets.banana()
        names, target, source = ["x1", "x2"], args.target or "y", "bundled banana data"
    else:
        X, y, names, target = read_csv(args.csv, args.target)
        source = args.csv
    train, test = split(len(y), args.test_fraction, args.seed)
    centre, spread = X[train].mean(axis=0), X[train].std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    likelihood = _component(LIKELIHOODS[args.likelihood], "likelihood")()
    try:
        labels = np.asarray(likelihood.prepare_targets(y), dtype=float)
    except ValueError as error:
        raise UsageError(f"target column {target!r}: {error}") from None
    model, y_shift, y_scale = _build(args, (X[train] - centre) / spread, labels[train])
    return {
        "X": X,
        "labels": labels,
        "names": names,
        "target": target,
        "source": source,
        "train": train,
        "test": test,
        "centre": centre,
        "spread": spread,
        "model": model,
        "y_shift": y_shift,
        "y_scale": y_scale,
        "optimizer": _optimizer(args),
    }


def _fit_and_report(args, p: dict) -> int:
    import jax
    import optax

    import ngvi

    X, labels, train, test = p["X"], p["labels"], p["train"], p["test"]
    learn = None if args.no_learn else ngvi.LearnHyperparameters(optax.adam(args.hyper_lr))
    print(
        f"ngvi fit: {p['source']}: {len(train)} train / {len(test)} test points, {X.shape[1]} "
        f"features, target {p['target']!r}, {args.likelihood} likelihood, {args.optimizer}"
        + ("" if learn is None else " + learned hyperparameters")
    )
    result = ngvi.fit(
        p["model"],
        p["optimizer"],
        args.steps,
        key=jax.random.PRNGKey(args.seed),
        learn=learn,
        progress=not args.quiet,
        throw=False,
    )

    def predict(inputs):
        standardised = (inputs - p["centre"]) / p["spread"]
        prediction = ngvi.predict(result.model, result.q, standardised)
        mean = np.asarray(prediction.mean) * p["y_scale"] + p["y_shift"]
        variance = np.asarray(prediction.variance) * p["y_scale"] ** 2
        latent = (
            np.asarray(prediction.latent_mean) * p["y_scale"] + p["y_shift"],
            np.asarray(prediction.latent_variance) * p["y_scale"] ** 2,
        )
        return mean, variance, latent

    mean, variance, (latent_mean, latent_variance) = predict(X)
    if args.likelihood == "poisson":
        log_pred = poisson_log_predictive(labels[test], latent_mean[test], latent_variance[test])
        scores = {
            "nlpd": float(-np.mean(log_pred)),
            "rate_rmse": float(np.sqrt(np.mean((mean[test] - labels[test]) ** 2))),
        }
    else:
        scores = metrics(args.likelihood, labels[test], mean[test], variance[test])
    report(result, p["names"], scores)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.csv"
    columns = {
        "predictive_mean": mean,
        "predictive_variance": variance,
        "latent_mean": latent_mean,
        "latent_variance": latent_variance,
    }
    write_predictions(path, X, labels, p["names"], p["target"], test, columns)
    print(f"  wrote {path}")
    summary = {
        "likelihood": args.likelihood,
        "optimizer": args.optimizer,
        "num_steps": result.num_steps,
        "outcome": result.message,
        "elbo": float(result.elbo),
        "num_train": int(len(train)),
        "num_test": int(len(test)),
        "test_metrics": scores,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_plot:
        from .plot import plot

        path = plot(
            out / "plot.png",
            args.likelihood,
            X,
            labels,
            mean,
            variance,
            test,
            p["names"],
            lambda inputs: predict(inputs)[0],
        )
        print(f"  wrote {path}")
    if result.outcome == ngvi.FitOutcome.failed:
        print(f"ngvi fit: warning: {result.message}", file=sys.stderr)
        return 1
    return 0
