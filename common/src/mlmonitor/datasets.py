"""The user's table: a CSV or Parquet file read into a pandas DataFrame, for learn_model and features.

Nothing is downloaded; without a file both services use scikit-learn's bundled diabetes data.
"""

from __future__ import annotations

from pathlib import Path

READERS = {".csv": "read_csv", ".parquet": "read_parquet", ".pq": "read_parquet"}


class DatasetError(ValueError):
    """The data can't be used; the message says why, in one line."""


def load_table(path: Path, target: str | None = None):
    """The table at `path`; with `target`, checks that the column exists. Raises DatasetError."""
    import pandas as pd

    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(f"{path}: expected a .csv or .parquet file")
    try:
        table = getattr(pd, reader)(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except Exception as error:  # a parser's error, whatever the library
        raise DatasetError(f"{path} can't be read: {type(error).__name__}: {error}") from None
    if table.empty:
        raise DatasetError(f"{path} has no rows")
    if target is not None and target not in table.columns:
        raise DatasetError(f"{path} has no column {target!r}; its columns are {', '.join(map(str, table.columns))}")
    return table
