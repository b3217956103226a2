"""Multi-class GP classification: ngvi's softmax GP against scikit-learn's one-vs-rest Laplace.

Run with `make bench-multiclass` (or `python benchmarks/bench_multiclass.py`). Data: iris, wine
and digits (bundled with scikit-learn), each split once into 70% training and 30% test points
(`train_test_split(stratify=y, random_state=seed)`), features standardised on the training
part; and letter (`ngvi.datasets.letter()`, 20,000 x 16, 26 classes) split 16,000 / 4,000.
Both methods use a zero-mean GP with kernel `sigma^2 * SE(ARD lengthscales)` (on digits' 64
pixels one shared lengthscale: 65 hyperparameters per one-vs-rest fit kept scikit-learn's
L-BFGS from finishing in 25 minutes), initialised at `sigma^2 = 1` and every lengthscale
`sqrt(d)`, and learn the hyperparameters on the training set:

- **ngvi**: `ngvi.sklearn.GaussianProcessClassifier` = one variational posterior over `C`
  latent GPs sharing the kernel, softmax likelihood, natural-gradient steps with Adam on the
  kernel (`num_inducing="auto"`: dense up to 1,000 training points, 200 inducing inputs above).
  On iris and wine also `multi_class="robustmax"`, the reason softmax is the default.
- **Laplace**: `sklearn.gaussian_process.GaussianProcessClassifier(ConstantKernel(1) *
  RBF(sqrt(d) * ones(d)))` = one-vs-rest: `C` binary Laplace GPs, each with its own
  hyperparameters by L-BFGS, and their probabilities normalised to sum to 1.
- **letter**: ngvi's `SparseModel` (`--inducing` inputs, minibatches of 1,024, as in
  `examples/letter_sparse.py`). scikit-learn's GPC is an `O(n^3)` fit per class and one-vs-rest
  means 26 of them: it does not finish on 16,000 points in reasonable time, so it is timed on a
  random `--subset` of the training points and scored on the same 4,000 test points.

Reported: test accuracy, test NLPD (mean of `-log p(y_true | x)`, natural log, probabilities
clipped at `1e-12`) and fit wall time in seconds (ngvi's includes JIT compilation), BLAS/LAPACK
and XLA on one thread for both. The table replaces the marked multi-class section of
`docs/results.md` (appended if absent; `bench_real_data.py` owns a different marked section).
Each data set's rows are also kept in `benchmarks/results_multiclass.json`, so
`--datasets letter` reruns one data set and the table keeps the others.
"""

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false"
)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _sections import write_section  # noqa: E402 - benchmarks/ is on sys.path when run
from sklearn.datasets import load_digits, load_iris, load_wine  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.gaussian_process import GaussianProcessClassifier as LaplaceGPC  # noqa: E402
from sklearn.gaussian_process.kernels import RBF, ConstantKernel  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import ngvi  # noqa: E402
from ngvi.sklearn import GaussianProcessClassifier  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "docs" / "results.md"
STORE = HERE / "results_multiclass.json"
START, END = "<!-- bench-multiclass:start -->", "<!-- bench-multiclass:end -->"
SMALL = {"iris": load_iris, "wine": load_wine, "digits": load_digits}


def nlpd(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))))


def split(X, y, test_size, seed):
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=seed
    )
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), y_train, scaler.transform(X_test), y_test


def score(name: str, estimator, X_train, y_train, X_test, y_test) -> dict:
    start = time.perf_counter()
    estimator.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    proba = estimator.predict_proba(X_test)
    row = {
        "n": len(y_train),
        "accuracy": float(np.mean(np.argmax(proba, 1) == y_test)),
        "nlpd": nlpd(proba, y_test),
        "seconds": seconds,
    }
    print(f"{name:40s} acc {row['accuracy']:.3f} nlpd {row['nlpd']:.3f} fit {seconds:.1f}s")
    return row


def ours(d: int, args, **options) -> GaussianProcessClassifier:
    return GaussianProcessClassifier(
        lengthscale=np.sqrt(d),
        num_steps=args.num_steps,
        lr=args.lr,
        standardize=False,  # standardised by `split`
        random_state=args.seed,
        **options,
    )


def laplace(d: int, seed: int, ard: bool = True) -> LaplaceGPC:
    lengthscale = np.full(d, np.sqrt(d)) if ard else np.sqrt(d)
    kernel = ConstantKernel(1.0) * RBF(length_scale=lengthscale)
    return LaplaceGPC(kernel=kernel, random_state=seed)


def small(name: str, args) -> dict:
    X, y = SMALL[name](return_X_y=True)
    data = split(X.astype(float), y, 0.3, args.seed)
    d, ard = X.shape[1], name != "digits"  # digits: 64 pixels, one shared lengthscale
    rows = {"C": len(np.unique(y)), "d": d, "test": len(data[3])}
    rows["ngvi"] = score(f"{name} ngvi softmax", ours(d, args, ard=ard), *data)
    if name != "digits":
        robust = ours(d, args, multi_class="robustmax")
        rows["ngvi robustmax"] = score(f"{name} ngvi robustmax", robust, *data)
    laplace_gpc = laplace(d, args.seed, ard)
    rows["Laplace"] = score(f"{name} scikit-learn Laplace", laplace_gpc, *data)
    return rows


def letter(args) -> dict:
    X, y, _ = ngvi.datasets.letter()
    y = y.astype(int)
    X_train, y_train, X_test, y_test = split(X, y, 4000, args.seed)
    rows = {"C": 26, "d": X.shape[1], "test": len(y_test)}
    import letter_sparse  # examples/letter_sparse.py, on the path set in main()

    start = time.perf_counter()
    fitted = letter_sparse.fit_sparse(
        X_train, y_train, args.letter_steps, args.inducing, args.mc_samples, seed=args.seed
    )
    seconds = time.perf_counter() - start
    proba = letter_sparse.class_probabilities(fitted, X_test)
    rows["ngvi"] = {
        "n": len(y_train),
        "accuracy": float(np.mean(np.argmax(proba, 1) == y_test)),
        "nlpd": nlpd(proba, y_test),
        "seconds": seconds,
    }
    print(f"letter ngvi sparse: {rows['ngvi']}")
    sub = np.random.default_rng(args.seed).choice(len(y_train), args.subset, replace=False)
    subset = (X_train[sub], y_train[sub], X_test, y_test)
    laplace_subset = laplace(X.shape[1], args.seed)
    rows["Laplace subset"] = score("letter Laplace subset", laplace_subset, *subset)
    return rows


def _row(data: str, method: str, r: dict, C: int, d: int, best: bool) -> str:
    nlpd_cell = f"**{r['nlpd']:.3f}**" if best else f"{r['nlpd']:.3f}"
    return (
        f"| {data} | {method} | {r['n']} | {C} | {d} | {r['accuracy']:.3f} | {nlpd_cell} "
        f"| {r['seconds']:.1f} |"
    )


def render(results: dict) -> str:
    lines = [
        START,
        "",
        "Generated by `benchmarks/bench_multiclass.py` (x86_64 CPU, single-threaded BLAS and "
        "XLA, float64; one train/test split per data set). The machine was shared with other "
        "jobs: the load average during each data set's run is listed below the table, and fit "
        "times move with it. **Bold** marks the best NLPD among methods fitted on the same "
        "points.",
        "",
        "| data set | method | n train | C | d | accuracy | NLPD | fit s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name, rows in results.items():
        groups = [("ngvi", "ngvi robustmax", "Laplace"), ("Laplace subset",)]
        for group in groups:
            present = [method for method in group if method in rows]
            if not present:
                continue
            best = min(present, key=lambda method: rows[method]["nlpd"])
            for method in present:
                label = {
                    "ngvi": "ngvi softmax" + rows.get("note", ""),
                    "ngvi robustmax": "ngvi robust max",
                    "Laplace": "scikit-learn Laplace (one-vs-rest)",
                    "Laplace subset": "scikit-learn Laplace (one-vs-rest), random subset",
                }[method]
                lines.append(_row(name, label, rows[method], rows["C"], rows["d"], method == best))
        if "Laplace" in rows:
            ok = rows["ngvi"]["nlpd"] <= rows["Laplace"]["nlpd"]
            verdicts.append(f"{name}: {'yes' if ok else 'NO'}")
    lines += [
        "",
        "ngvi's softmax NLPD at least as good as scikit-learn's: " + ", ".join(verdicts) + ".",
        "",
    ]
    lines += [f"- {name}: {rows['settings']}" for name, rows in results.items()]
    lines += ["", END]
    return "\n".join(lines)


def write(section: str, path: Path) -> None:
    """Replace this benchmark's marked section of `path`, or append it; never touch the rest."""
    write_section(path, START, END, section, new_page="# Results on real data\n")


def main() -> None:
    import sys

    sys.path.insert(0, str(HERE.parent / "examples"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=[*SMALL, "letter"])
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--letter-steps", type=int, default=1500)
    parser.add_argument("--inducing", type=int, default=256)
    parser.add_argument("--mc-samples", type=int, default=256)
    parser.add_argument("--subset", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    results = json.loads(STORE.read_text()) if STORE.exists() else {}
    for name in args.datasets:
        load = os.getloadavg()[0]
        rows = letter(args) if name == "letter" else small(name, args)
        settings = f"ngvi `num_steps={args.num_steps}`, Adam `lr={args.lr}`"
        if name == "digits":
            settings += ", one lengthscale for all pixels (both methods)"
        if name == "letter":
            rows["note"] = f" (sparse, M = {args.inducing})"
            settings = (
                f"{args.letter_steps} minibatch steps of 1,024, M = {args.inducing}, "
                f"{args.mc_samples} Monte Carlo samples; scikit-learn on {args.subset} points"
            )
        rows["settings"] = (
            f"{datetime.date.today().isoformat()}, split seed {args.seed}, {settings}; load "
            f"average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"({platform.machine()})"
        )
        results = json.loads(STORE.read_text()) if STORE.exists() else {}  # runs may overlap
        results[name] = rows
        STORE.write_text(json.dumps(results, indent=1) + "\n")
    order = [*SMALL, "letter"]
    results = {name: results[name] for name in order if name in results}
    section = render(results)
    print(section)
    if not args.no_write:
        write(section, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
