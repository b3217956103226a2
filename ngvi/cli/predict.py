"""`ngvi predict`: predictions of a model saved by `ngvi fit --save`, at the rows of a CSV.

    ngvi fit train.csv --target label --save model.ngvi
    ngvi predict model.ngvi new.csv --out predictions.csv

The new CSV needs the feature columns the model was fitted on (by name; other columns, the
target among them, are copied through). They are standardised as the training split was, and
`predictions.csv` gets every input column followed by the predictions: the predictive and
latent mean and variance on the target's scale, or for several classes one probability column
`p_<class>` per class and the `predicted` class. The file is written atomically: an interrupted
run leaves the previous file, never a part of the new one.
"""

import argparse
import csv
import io
import sys

from . import model as models
from .data import UsageError, read_features
from .output import check_not_an_input, check_out_file, quiet, write_failure
from .report import _cell

CLI_METADATA = ("names", "likelihood", "classes", "centre", "spread", "y_shift", "y_scale")
"""What `ngvi fit --save` stores beside the model for reading new rows."""


def add_predict_parser(commands) -> None:
    """Register the `predict` subcommand on an `argparse` subparsers object."""
    parser = commands.add_parser(
        "predict",
        help="predict with a model saved by `ngvi fit --save` at the rows of a CSV file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a model file written by `ngvi fit --save`")
    parser.add_argument("csv", help="CSV file with a header row and the model's feature columns")
    parser.add_argument("--out", default="predictions.csv", help="the CSV file to write")
    parser.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """The `predict` subcommand; returns the exit code (2 for bad input, 1 for a write error,
    130 if interrupted)."""
    import jax

    with jax.enable_x64(True), quiet():
        try:
            return _predict(args)
        except ValueError as error:  # UsageError, ngvi.LoadError
            print(f"ngvi predict: error: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, OSError) as error:
            return write_failure("predict", args.out, error)


def _predict(args) -> int:
    import ngvi
    from ngvi.serialisation import atomic_write, read_metadata

    out = check_out_file(args.out, "--out")
    check_not_an_input(out, "--out", args.csv, args.model)
    meta = read_metadata(args.model)
    if not meta or "ngvi_cli" not in meta:
        raise UsageError(
            f"{args.model!r} was not saved by `ngvi fit --save`, so it does not say how to "
            "read a CSV (feature columns, standardisation); use `ngvi.load` in Python."
        )
    missing = [key for key in CLI_METADATA if key not in meta]
    if missing:
        raise UsageError(
            f"{args.model!r} lacks what `ngvi fit --save` writes ({', '.join(missing)}); save "
            "it again with this version's `ngvi fit --save`."
        )
    X, header, rows = read_features(args.csv, meta["names"])
    result = ngvi.load(args.model)
    columns = models.columns(result, meta, X)
    clash = [name for name in columns if name in header]
    if clash:
        raise UsageError(f"{args.csv!r} already has the output columns {', '.join(clash)}.")
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([*header, *columns])
    for i, row in enumerate(rows):
        writer.writerow([*row, *(_cell(column[i]) for column in columns.values())])
    atomic_write(out, text.getvalue().encode())
    print(f"ngvi predict: wrote {len(rows)} predictions to {str(out)!r}")
    return 0
