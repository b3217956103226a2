"""The `ngvi fit` command line (`python -m ngvi fit ...`)."""

from .data import UsageError as UsageError, read_csv as read_csv, split as split
from .fit import add_fit_parser as add_fit_parser, run_fit as run_fit
from .report import metrics as metrics
