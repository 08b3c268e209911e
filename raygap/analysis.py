"""Reading and analysing an experiment's Parquet tables (also usable without Jupyter)."""

from __future__ import annotations

import pandas as pd


def pareto_front(frame: pd.DataFrame, x: str = "clean_acc", y: str = "robust_acc") -> pd.DataFrame:
    """The rows not dominated in (x, y), both maximised: no other row is >= on both and > on one.

    Sorted by x descending. Rows with a missing x or y are left out.
    """
    rows = frame.dropna(subset=[x, y]).sort_values([x, y], ascending=False)
    keep, best_y = [], float("-inf")
    for index, value in rows[y].items():
        # sorted by x descending (ties: y descending), a row is on the front iff its y beats every
        # row before it, which all have at least its x
        if value > best_y:
            keep.append(index)
            best_y = value
    return rows.loc[keep]
