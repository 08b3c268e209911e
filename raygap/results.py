"""The Parquet tables: `epochs` (one row per trial and epoch) and `trials` (one row per trial; the
search's Recorder writes it).

Each table is a folder of part files, one per trial, under `${storage}/${name}/<table>/`, rewritten
whole and atomically whenever that trial has news: a crash never leaves a half-written file, and a
re-run epoch replaces its row instead of adding another. Every part file has the same schema
(every config key of every method as its own column), so pandas, pyarrow and DuckDB read the folder
as one table.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import types
import typing
from functools import lru_cache

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from raygap import layout, storage
from raygap.errors import UserError
from raygap.schema import RaygapConfig

@dataclasses.dataclass
class EpochRow:
    """One epoch of one run, as the loop reports it and the epochs table stores it: a new metric is a new
    field here (the table's column, Tune's result and the MLflow metric follow). Numbers are float64 columns
    (int64 for ints); the method's loss parts (`losses`) become loss_<part> columns; text comes last."""

    epoch: int
    kept_epoch: int  # the epoch whose weights the run would export if it ended now (train.keep)
    lr: float
    loss: float
    clean_acc: float
    robust_acc: float
    clean_se: float  # binomial standard errors of the validation figures
    robust_se: float
    kept_clean_acc: float  # the kept epoch's figures
    kept_robust_acc: float
    images_per_s: float
    mfu: float | None  # model FLOP utilisation; None off a known GPU
    train_seconds: float
    wall_seconds: float = dataclasses.field(metadata={"summed": True})  # a trial's total is the sum over epochs
    gpu_seconds: float = dataclasses.field(metadata={"summed": True})
    cpu_seconds: float = dataclasses.field(metadata={"summed": True})
    finished_at: float  # Unix time at the end of the epoch
    losses: dict  # the method's loss parts by name (afd: {"adv": ..., "dis": ...})
    node: str | None  # the Ray node of rank 0; None in this process
    # PBT's lineage: the first epoch a trial trained from another trial's weights names that trial and the
    # epoch it took them at; None everywhere else (columns added later: older tables read them as null)
    parent_epoch: int | None = None
    parent_trial: str | None = None
    skipped_images: int = 0  # damaged images the epoch skipped, all ranks (stream.py; null in older tables)

    def as_row(self) -> dict:
        """The flat row: the epochs table's columns, Tune's result, the checkpoint's history entry."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "losses"}
        return {**row, **{f"loss_{part}": value for part, value in self.losses.items()}}

    @staticmethod
    def metrics() -> list[str]:
        """The float columns, loss parts of every method included (what a tracker logs per epoch)."""
        return [name for name, kind in epoch_columns() if kind == pa.float64()]

    @staticmethod
    def summed() -> list[str]:
        """The columns a trial's row totals over its epochs."""
        return [f.name for f in dataclasses.fields(EpochRow) if f.metadata.get("summed")]


@lru_cache(maxsize=None)
def epoch_columns() -> tuple:
    """(column, arrow type) of an epoch row, in the table's order: numbers, loss parts, text."""
    numbers, text = [], []
    for name, hint in typing.get_type_hints(EpochRow).items():
        if name == "losses":
            numbers += [(f"loss_{part}", pa.float64()) for part in loss_parts()]
        else:
            (text if _arrow_type(hint) == pa.string() else numbers).append((name, _arrow_type(hint)))
    return tuple(numbers + text)


def _arrow_type(annotation):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # Optional[X], X | None
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_type(inner)
    if origin in (list, typing.List) or annotation is typing.Any:
        return pa.string()  # lists are kept as JSON text
    if isinstance(annotation, type) and issubclass(annotation, str):  # str and the closed choices (config.choice)
        return pa.string()
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64()}[annotation]


# The search's own settings describe the experiment, not a trial: they stay out of the columns.
NOT_COLUMNS = ("tune", "final_eval", "compare")


def _fields(cls, prefix: str) -> dict:
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        key = f"{prefix}{name}"
        if key in NOT_COLUMNS:
            continue
        if dataclasses.is_dataclass(hint):
            out.update(_fields(hint, key + "."))
        elif name == "method" and hint is typing.Any:
            from raygap.methods import METHODS

            for method in METHODS.values():
                out.update(_fields(method.Params, key + "."))
        else:
            out[key] = _arrow_type(hint)
    return out


@lru_cache(maxsize=None)
def config_fields() -> tuple:
    """(column, arrow type) for every config key of every method, in a stable order."""
    return tuple(sorted(_fields(RaygapConfig, "").items()))


@lru_cache(maxsize=None)
def loss_parts() -> tuple:
    from raygap.methods import METHODS

    return tuple(sorted({part for m in METHODS.values() for part in m.parts}))


@lru_cache(maxsize=None)
def epochs_schema() -> pa.Schema:
    fields = [("experiment", pa.string()), ("trial_id", pa.string()), *epoch_columns()]
    return pa.schema(fields + list(config_fields()))


def trials_schema(cfg) -> pa.Schema:
    """The trials table: one row per trial, with the finalists' test columns of `cfg.final_eval`."""
    fields = [("experiment", pa.string()), ("trial_id", pa.string()), ("status", pa.string()), ("error", pa.string()),
              ("retries", pa.int64()),
              ("epochs", pa.int64()), ("clean_acc", pa.float64()), ("robust_acc", pa.float64()),
              ("loss", pa.float64()), ("kept_epoch", pa.int64()), ("kept_clean_acc", pa.float64()),
              ("kept_robust_acc", pa.float64()), ("kept_clean_se", pa.float64()), ("kept_robust_se", pa.float64()),
              ("wall_seconds", pa.float64()), ("gpu_seconds", pa.float64()), ("cpu_seconds", pa.float64()),
              ("started_at", pa.float64()), ("ended_at", pa.float64()), ("model_path", pa.string()),
              ("finalist", pa.bool_()), ("params", pa.string()), ("config", pa.string())]
    fields += [(column, pa.float64()) for column in test_columns(cfg)]
    return pa.schema(fields + list(config_fields()))


def test_columns(cfg) -> list[str]:
    """The finalists' test-split columns: clean, each final attack's own accuracy, and the per-example worst case."""
    from raygap.attacks import accuracy_key

    return [f"test_{accuracy_key(a)}" for a in dict.fromkeys(["clean", *cfg.final_eval.attacks])] + ["test_robust_acc"]


def examples_schema(attacks) -> pa.Schema:
    """The examples table: one row per test example a finalist was evaluated on, whether it was classified
    correctly clean, under each of `attacks` (final_eval.attacks) and under all of them (`correct_robust`)."""
    from raygap.attacks import accuracy_key

    fields = [("experiment", pa.string()), ("trial_id", pa.string()), ("example", pa.int64()), ("label", pa.int64())]
    fields += [(f"correct_{accuracy_key(a).removesuffix('_acc')}", pa.bool_())
               for a in dict.fromkeys(["clean", *attacks])]
    return pa.schema(fields + [("correct_robust", pa.bool_())])


def write_examples(experiment_dir: str, trial_id: str, result: dict, attacks) -> str:
    """(Re)write `trial_id`'s part of the examples table from an evaluation's `result["examples"]`."""
    experiment = experiment_dir.rstrip("/").rsplit("/", 1)[-1]
    found = result["examples"]
    rows = [{"experiment": experiment, "trial_id": trial_id, "example": i, "label": label,
             **{f"correct_{name}": found["correct"][name][i] for name in found["correct"]}}
            for i, label in enumerate(found["label"])]
    path = layout.part(experiment_dir, "examples", trial_id)
    write(path, rows, examples_schema(attacks))
    return path


def flatten(config: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON text; the search's own settings are left out."""
    out = {}
    for key, value in config.items():
        if f"{prefix}{key}" in NOT_COLUMNS:
            continue
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def _missing_to_null(value):
    """NaN (how pandas reads back a null int or float) becomes null again."""
    return None if isinstance(value, float) and value != value else value


def write(path: str, rows: list, schema: pa.Schema) -> None:
    """Write `rows` (dicts; absent keys are null) as one Parquet file of `schema`, atomically."""
    columns = {name: [_missing_to_null(row.get(name)) for row in rows] for name in schema.names}
    table = pa.table(columns, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(path, buffer.getvalue())


def write_epochs(experiment_dir: str, trial_id: str, config: dict | list, history: list) -> str:
    """(Re)write trial `trial_id`'s part of the epochs table with all its epochs so far. `config`: the
    config every epoch trained with, or a list of one per epoch (PBT changes it during a trial)."""
    experiment = experiment_dir.rstrip("/").rsplit("/", 1)[-1]
    configs = config if isinstance(config, list) else [config] * len(history)
    rows = [{"experiment": experiment, "trial_id": trial_id, **flatten(settings), **row}
            for settings, row in zip(configs, history)]
    path = layout.part(experiment_dir, "epochs", trial_id)
    write(path, rows, epochs_schema())
    return path


def read_part(path: str):
    """One part file as a pandas DataFrame."""
    return pq.read_table(io.BytesIO(storage.read_bytes(path))).to_pandas()


def check_readable(experiment_dir: str, table: str) -> None:
    """Refuse, naming the file, a part file of `table` that Parquet cannot read (before a search adds to it)."""
    import pyarrow as pa

    folder = layout.table(experiment_dir, table)
    for name in storage.listdir(folder):
        if name.endswith(".parquet") and not name.startswith("."):
            try:
                pq.read_metadata(io.BytesIO(storage.read_bytes(storage.join(folder, name))))
            except (pa.ArrowInvalid, OSError) as err:
                raise UserError(f"{storage.join(folder, name)} is not a readable Parquet file ({err}); move it "
                                "away (or restore it from a backup) and run the same command again") from None


def finalist_candidates(trials, objective, top_k: int):
    """The trials a search evaluates on the test split: its `top_k` completed trials, best first by `objective`
    (a `tune.objectives` entry, config node or dict). raygap.tune evaluates them; keep_tables keeps their models."""
    done = trials[trials.status == "completed"]
    return done.sort_values(objective["metric"], ascending=objective["mode"] == "min").head(top_k)


def read_table(experiment_dir: str, table: str):
    """A table of an experiment as a pandas DataFrame (empty if nothing was written yet)."""
    import pandas as pd

    folder = layout.table(experiment_dir, table)
    if not storage.listdir(folder):
        return pd.DataFrame()
    fs, where = storage.filesystem(folder)
    for attempt in range(1, 6):
        try:
            # pyarrow skips the hidden temporary files of writes in flight (names starting with '.'). It takes
            # a folder's schema from its first file, so the columns of every part are unified first: a part
            # written before a column was added (EpochRow's lineage) reads it as null, and the column is kept.
            parts = pads.dataset(where, filesystem=fs, format="parquet")  # one listing, reused below
            schema = pa.unify_schemas([fragment.physical_schema for fragment in parts.get_fragments()])
            return parts.replace_schema(schema).to_table().to_pandas()
        except (pa.ArrowInvalid, OSError):
            # A part replaced between the listing and its read (a running search updates a trial's row) is
            # read at the listed size, which is the old file's: list again. A part that stays unreadable is
            # a damaged file, which check_readable names before a search writes beside it.
            if attempt == 5:
                raise
            time.sleep(0.2 * attempt)
