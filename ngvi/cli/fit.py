"""`ngvi fit`: fit a GP to a CSV file from the command line and report held-out metrics.

    ngvi fit data.csv --target label --likelihood probit --out results/ --save model.ngvi
    ngvi fit big.csv --inducing 256 --batch-size 1024      # the sparse model, for large N
    python -m ngvi fit            # the bundled 400-point banana classification set

The CSV has a header row (a UTF-8 byte-order mark is fine); the features are every other
numeric column (text columns are skipped). The likelihood defaults to `auto`: softmax for a
target of text labels or of more than two integer labels (one probability column per class in
the predictions), probit otherwise. Features are standardised with the training split's mean
and standard deviation, a held-out test split is kept aside, and the model is a GP with an ARD
squared-exponential kernel whose hyperparameters are learned (`LearnHyperparameters`) while
the posterior is fitted by the chosen strategy: dense up to 5,000 training points, sparse with
`--inducing M`. Results: metrics on stdout and in `metrics.json`, `predictions.csv` (every row,
with its split) and `plot.png` in `--out`, which is replaced as a whole only once every file is
complete (Ctrl-C or a crash leaves the previous results); `--save` keeps the fitted model for
`ngvi predict`.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..fitting.diagnosis import fell_over_the_fit
from . import model as models
from .data import UsageError, read_csv, split
from .output import (
    check_not_an_input,
    check_out_file,
    check_out_folder,
    quiet,
    replaced_folder,
    write_failure,
)
from .report import metrics, poisson_log_predictive, report, write_predictions

OPTIMIZERS = {
    "natgrad": "NaturalGradient",
    "adam": "Adam",
    "blr": "BLR",
    "gauss-newton": "GaussNewton",
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
    parser.add_argument("--likelihood", choices=sorted(models.LIKELIHOODS), default="auto")
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
        "--inducing", type=int, metavar="M", help="sparse GP on M inducing points (large data)"
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="B", help="minibatches of B rows (with --inducing)"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="held-out share (default: 0.2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of the fit")
    parser.add_argument("--out", default="ngvi-fit-output", help="folder for predictions and plot")
    parser.add_argument("--save", metavar="FILE", help="save the fitted model (for ngvi predict)")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_fit)


def _optimizer(args):
    import ngvi

    cls = getattr(ngvi, OPTIMIZERS[args.optimizer], None)
    if cls is None:
        raise UsageError(f"the optimizer {args.optimizer!r} is not available in this version.")
    return cls() if args.lr is None else cls(lr=args.lr)


def run_fit(args: argparse.Namespace) -> int:
    """The `fit` subcommand; returns the exit code (2 for bad input, 1 if the fit failed or an
    output could not be written, 130 if interrupted)."""
    import jax

    with jax.enable_x64(True), quiet():
        try:
            problem = _prepare(args)
        except ValueError as error:  # UsageError, and ngvi's own input checks
            print(f"ngvi fit: error: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
        try:
            return _fit_and_report(args, problem)
        except (KeyboardInterrupt, OSError) as error:
            return write_failure("fit", args.out, error)


def _prepare(args) -> dict:
    """Everything user input can break, checked before anything is compiled."""
    import ngvi

    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}.")
    if not args.hyper_lr > 0:
        raise UsageError(f"--hyper-lr must be positive, got {args.hyper_lr}.")
    if args.csv is None:
        X, y = ngvi.datasets.banana()
        names, target, source, classes = (
            ["x1", "x2"],
            args.target or "y",
            "bundled banana data",
            None,
        )
    else:
        X, y, names, target, classes = read_csv(args.csv, args.target)
        source = args.csv
    args.likelihood = kind = models.resolve_likelihood(args.likelihood, y, classes)
    train, test = split(len(y), args.test_fraction, args.seed)
    centre, spread = X[train].mean(axis=0), X[train].std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    if kind == "softmax":
        y, classes = models.class_labels(y, classes)
    if kind in models.CLASSIFIERS and np.unique(y).size < 2:
        only = classes[0] if classes else f"{y[0]:g}"
        raise UsageError(f"target column {target!r} has one class only ({only!r}); a classifier "
                         "needs examples of at least two.")  # fmt: skip
    try:
        labels = np.asarray(models.likelihood(kind, max(2, len(classes or ()))).prepare_targets(y))
    except ValueError as error:
        hint = models.label_hint(kind, y)
        raise UsageError(f"target column {target!r}: {error}{hint}") from None
    labels = labels.astype(float)
    out = check_out_folder(args.out)
    if args.save is not None and out.resolve() in Path(args.save).resolve().parents:
        raise UsageError(
            f"--save {args.save!r} is inside --out {args.out!r}, which is replaced as a "
            "whole; save the model elsewhere."
        )
    save = None if args.save is None else check_out_file(args.save, "--save")
    if save is not None:
        check_not_an_input(save, "--save", args.csv)
    model, y_shift, y_scale = models.build(
        args, kind, (X[train] - centre) / spread, labels[train], len(classes or ())
    )
    meta = {
        "names": names,
        "target": target,
        "likelihood": kind,
        "classes": classes,
        "centre": centre.tolist(),
        "spread": spread.tolist(),
        "y_shift": y_shift,
        "y_scale": y_scale,
        "binary_labels": models.binary_labels(kind, y, classes),
    }
    return {"X": X, "labels": labels, "y": y, "source": source, "train": train, "test": test,
            "model": model, "optimizer": _optimizer(args), "meta": meta, "out": out,
            "save": save}  # fmt: skip


def _fit_and_report(args, p: dict) -> int:
    import jax
    import optax

    import ngvi

    X, labels, train, test, meta = p["X"], p["labels"], p["train"], p["test"], p["meta"]
    learn = None if args.no_learn else ngvi.LearnHyperparameters(optax.adam(args.hyper_lr))
    sparse = "" if args.inducing is None else f", sparse GP on {args.inducing} inducing points"
    print(
        f"ngvi fit: {p['source']}: {len(train)} train / {len(test)} test points, {X.shape[1]} "
        f"features, target {meta['target']!r}, {args.likelihood} likelihood, {args.optimizer}"
        + sparse
        + ("" if learn is None else " + learned hyperparameters"),
        flush=True,
    )
    result = ngvi.fit(
        p["model"],
        p["optimizer"],
        args.steps,
        key=jax.random.PRNGKey(args.seed),
        learn=learn,
        batch_size=args.batch_size,
        progress=not args.quiet,
        throw=False,
    )
    if result.outcome == ngvi.FitOutcome.interrupted:
        raise KeyboardInterrupt
    columns = models.columns(result, meta, X)
    scores = _scores(args.likelihood, labels[test], columns, test)
    report(result, meta["names"], scores)
    fallen = fell_over_the_fit(result.initial_elbo, result.elbo, result.elbo_error)
    if fallen:
        print(f"ngvi fit: warning: {fallen}", file=sys.stderr)
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
    classes = meta["classes"]
    # The target as the user wrote it (-1/+1 stays -1/+1; the likelihood's labels may be 0/1).
    shown = p["y"] if classes is None else np.asarray(classes)[labels.astype(int)]
    with replaced_folder(p["out"]) as staging:
        write_predictions(
            staging / "predictions.csv", X, shown, meta["names"], meta["target"], test, columns
        )
        (staging / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        if not args.no_plot and args.likelihood != "softmax":
            from .plot import plot

            def predict_mean(inputs):
                return models.columns(result, meta, inputs)["predictive_mean"]

            mean, variance = columns["predictive_mean"], columns["predictive_variance"]
            plot(staging / "plot.png", args.likelihood, X, labels, mean, variance, test,
                 meta["names"], predict_mean)  # fmt: skip
    print(f"  wrote {p['out'] / 'predictions.csv'}, metrics.json" + ", plot.png" * (
        (p["out"] / "plot.png").exists()))  # fmt: skip
    if p["save"] is not None:
        ngvi.save(p["save"], result, metadata={"ngvi_cli": 1, **meta})
        print(f"  saved the model to {p['save']}")
    if result.outcome == ngvi.FitOutcome.failed:
        print(f"ngvi fit: warning: {result.message}", file=sys.stderr)
        return 1
    return 0


def _scores(kind: str, truth, columns: dict, test) -> dict[str, float]:
    if kind == "softmax":
        probabilities = np.stack([v for k, v in columns.items() if k.startswith("p_")], axis=1)
        return metrics(kind, truth, probabilities[test], None)
    if kind == "poisson":
        log_pred = poisson_log_predictive(
            truth, columns["latent_mean"][test], columns["latent_variance"][test]
        )
        rate = columns["predictive_mean"][test]
        return {
            "nlpd": float(-np.mean(log_pred)),
            "rate_rmse": float(np.sqrt(np.mean((rate - truth) ** 2))),
        }
    return metrics(
        kind, truth, columns["predictive_mean"][test], columns["predictive_variance"][test]
    )
