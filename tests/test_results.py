"""The Parquet tables read back with pyarrow, pandas and DuckDB, on a local path and a file:// URI."""

import duckdb
import pandas as pd
import pytest

from raygap import results, schema

from helpers import load


def history(epochs, loss_parts):
    return [{"epoch": e, "lr": 0.01, "loss": 1.0 / e, **{f"loss_{p}": 0.5 for p in loss_parts}, "clean_acc": 0.9,
             "robust_acc": 0.5 + e / 100, "images_per_s": 100.0, "mfu": None, "train_seconds": 1.0,
             "wall_seconds": 1.5, "gpu_seconds": 0.0, "cpu_seconds": 1.5, "finished_at": 1000.0 + e}
            for e in range(1, epochs + 1)]


@pytest.mark.parametrize("uri", [False, True])
def test_epochs_of_different_methods_form_one_table(tmp_path, uri):
    where = f"file://{tmp_path}/exp" if uri else str(tmp_path / "exp")
    afd = schema.as_dict(load("method=afd", storage=tmp_path))
    trades = schema.as_dict(load("method=trades", "method.beta=2", storage=tmp_path))
    results.write_epochs(where, "t1", afd, history(2, ["ce_adv", "align", "confused", "separation"]))
    results.write_epochs(where, "t2", trades, history(3, ["ce", "kl"]))
    results.write_epochs(where, "t1", afd, history(3, ["ce_adv", "align", "confused", "separation"]))
    (tmp_path / "exp" / "epochs" / ".t3.parquet.0123.tmp").write_bytes(b"half a file")  # a write in flight

    table = results.read_table(where, "epochs")
    assert sorted(zip(table.trial_id, table.epoch)) == [(t, e) for t in ("t1", "t2") for e in (1, 2, 3)]
    by_trial = table.groupby("trial_id")
    assert by_trial["method.name"].first().to_dict() == {"t1": "afd", "t2": "trades"}
    assert table[table.trial_id == "t2"]["method.alpha"].isna().all()  # AFD's knob is null for TRADES
    assert (table[table.trial_id == "t2"]["method.beta"] == 2.0).all()
    assert table[table.trial_id == "t1"]["loss_kl"].isna().all()
    assert str(table["train.epochs"].dtype) == "int64" and str(table["attack.eps"].dtype) == "float64"

    folder = tmp_path / "exp" / "epochs"
    assert len(pd.read_parquet(folder)) == 6
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchall()[0][0]
    assert count == 6


def test_reading_a_table_that_does_not_exist_yet_is_empty(tmp_path):
    assert results.read_table(str(tmp_path / "nothing"), "trials").empty
