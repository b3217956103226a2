"""The `ngvi fit` and `ngvi predict` command line (`python -m ngvi fit ...`)."""

from .data import UsageError as UsageError, read_csv as read_csv, split as split
from .fit import add_fit_parser as add_fit_parser, run_fit as run_fit
from .predict import add_predict_parser as add_predict_parser, run_predict as run_predict
from .report import metrics as metrics
