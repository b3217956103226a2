"""Reading a CSV with a header row into features and a target, and splitting it.

Files are read as UTF-8 with an optional byte-order mark (as spreadsheets write them), and
every error names the file. A target column of text labels (`setosa`, `versicolor`, ...) is a
class label column: its classes are its distinct values in sorted order.
"""

import csv
import math
import re

import numpy as np


class UsageError(ValueError):
    """Bad input from the user: reported as one line on stderr with exit code 2."""


def read_rows(path: str) -> tuple[list[str], list[list[str]]]:
    """`(header, rows)` of a CSV file, blank rows dropped, every row as long as the header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)  # `line_num`: the file's line, blank rows counted
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except OSError as error:
        raise UsageError(f"cannot read {path!r}: {error.strerror or error}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"cannot read {path!r}: not a UTF-8 CSV file ({error})") from None
    if len(rows) < 2:
        raise UsageError(f"{path!r} needs a header row and at least one data row.")
    header, body = [name.strip() for name in rows[0][1]], [row for _, row in rows[1:]]
    for j, name in enumerate(header):
        if name in header[:j]:
            raise UsageError(
                f"{path!r} has two columns named {name!r} (columns {header.index(name) + 1} "
                f"and {j + 1}); give every column its own name."
            )
    for number, row in rows[1:]:
        if len(row) != len(header):
            raise UsageError(
                f"{path!r} line {number} has {len(row)} fields but the header has {len(header)}."
            )
    return header, body


def read_csv(
    path: str, target: str | None
) -> tuple[np.ndarray, np.ndarray, list[str], str, list[str] | None]:
    """`(X, y, feature_names, target_name, classes)` from a CSV with a header row.

    The features are the numeric columns other than the target (text columns are skipped).
    `classes` is `None` for a numeric target; for a column of text labels it is the sorted
    distinct labels, and `y` holds each row's index into it."""
    header, body = read_rows(path)
    target = header[-1] if target is None else target
    if target not in header:
        raise UsageError(f"no column {target!r} in {path!r}; the columns are {', '.join(header)}.")
    columns = {name: [row[j].strip() for row in body] for j, name in enumerate(header)}
    classes = None
    y = _numeric_column(columns[target], target, path, strict=False)
    if y is None:  # text labels: classes
        _check_no_missing_labels(columns[target], target, path)
        classes = sorted(set(columns[target]))
        y = np.asarray([classes.index(value) for value in columns[target]], dtype=float)
    features, names = [], []
    for name in header:
        if name == target:
            continue
        values = _numeric_column(columns[name], name, path, strict=False)
        if values is not None:
            features.append(values)
            names.append(name)
    if not features:
        raise UsageError(f"{path!r} has no numeric feature columns besides {target!r}.")
    return np.stack(features, axis=1), y, names, target, classes


def read_features(path: str, names: list[str]) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """`(X, header, rows)`: the columns `names` of a CSV (in that order), as numbers."""
    header, body = read_rows(path)
    missing = [name for name in names if name not in header]
    if missing:
        raise UsageError(
            f"{path!r} has no column {', '.join(map(repr, missing))}; the model was fitted on "
            f"{', '.join(names)}."
        )
    X = [
        _numeric_column([row[header.index(name)].strip() for row in body], name, path, strict=True)
        for name in names
    ]
    return np.stack(X, axis=1), header, body


MISSING = {"", "na", "n/a", "nan", "null", "?"}
"""How spreadsheets and data frames write a missing value (compared in lower case)."""


def _check_no_missing_labels(values: list[str], name: str, path: str) -> None:
    """Refuse a missing value in a column of text labels (it would become a class of its own)."""
    for row, value in enumerate(values):
        if value.lower() in MISSING:
            raise UsageError(
                f"{path!r}: the target column {name!r} has a missing value {value!r} in data "
                f"row {row + 1}; remove the row or give it a label."
            )


_FORMATTED_NUMBER = re.compile(r"[+-]?\d[\d,.' ]*")
"""A number with thousands separators or a decimal comma ("2,321", "0,5", "1 000")."""


def _numeric_column(values: list[str], name: str, path: str, strict: bool) -> np.ndarray | None:
    """Parse a column; `None` for a text column (no numbers at all) unless `strict`."""
    parsed, bad = [], None
    for row, value in enumerate(values):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
            bad = (row, value) if bad is None else bad
        else:
            if not math.isfinite(number):
                bad = (row, value) if bad is None else bad
        parsed.append(number)
    if bad is None:
        return np.asarray(parsed)
    if not strict and all(math.isnan(number) for number in parsed):
        written = [value for value in values if value.lower() not in MISSING]
        if written and all(_FORMATTED_NUMBER.fullmatch(value) for value in written):
            raise UsageError(
                f"{path!r}: column {name!r} holds numbers written with separators (e.g. "
                f"{written[0]!r}), which are not read as numbers; write them plainly (2321, "
                "0.5) or remove the column."
            )
        return None  # a text column: not a feature
    row, value = bad
    raise UsageError(
        f"{path!r}: column {name!r} has a non-numeric or non-finite value {value!r} in data "
        f"row {row + 1}."
    )


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/test indices; at least one point on each side."""
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in (0, 1), got {test_fraction}.")
    if n < 2:
        raise UsageError(f"need at least 2 rows to hold out a test split, got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    num_test = min(max(1, round(test_fraction * n)), n - 1)
    return np.sort(order[num_test:]), np.sort(order[:num_test])
