"""A crash never leaves a search that cannot resume: the Optuna journal's last record, cut short by a crash in
the middle of an append, is dropped with one line by the next driver; damage anywhere else is one line
naming the file, before Ray starts."""

import optuna
import pytest
import ray
from optuna.storages.journal import JournalFileBackend

from helpers import run_main
from raygap import study
from raygap.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def journal_with_trials(path, n: int) -> None:
    optuna_study = optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFileBackend(
        str(path))), direction="maximize")
    for value in range(n):
        optuna_study.optimize(lambda trial, v=value: trial.suggest_float("x", 0, 1) * 0 + v, n_trials=1)


def load(path):
    return optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFileBackend(str(path))))


def test_a_torn_last_record_is_dropped_and_the_study_goes_on(tmp_path, capsys):
    path = tmp_path / "optuna.journal"
    journal_with_trials(path, 2)
    whole = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(whole.splitlines(keepends=True)[-1][:25])  # an append cut short by a crash
    # what happened before the repair: the next appends (here two whole records) land after the torn bytes, the
    # first makes one line with them that is not JSON, and once a record follows it no read succeeds again
    merged = tmp_path / "merged.journal"
    merged.write_bytes(path.read_bytes() + 2 * whole.splitlines(keepends=True)[-1])
    with pytest.raises(ValueError):
        load(merged)

    study.repair_journal(str(path))
    line = capsys.readouterr().out.strip()
    assert line == (f"[study] the last record of {path} was cut short by a crash (25 bytes): dropped; the study goes "
                    "on from the whole records before it")
    assert path.read_bytes() == whole  # exactly the whole records, none lost
    load(path).optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert [t.state for t in load(path).trials].count(optuna.trial.TrialState.COMPLETE) == 3
    study.repair_journal(str(path))  # a whole journal is left as it is, silently
    assert capsys.readouterr().out == "" and len(load(path).trials) == 3


def test_a_journal_damaged_before_its_end_is_one_line_naming_it_before_ray_starts(tmp_path):
    experiment = tmp_path / "results" / "damaged"
    experiment.mkdir(parents=True)
    path = experiment / "optuna.journal"
    journal_with_trials(path, 2)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b"{not json\n"
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    with pytest.raises(UserError, match="is damaged at record 2, not at its end"):
        study.repair_journal(str(path))
    proc = run_main("tune", f"storage={tmp_path / 'results'}", "name=damaged")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"the Optuna journal {path} is damaged at record 2" in proc.stderr and "move it aside" in proc.stderr
    assert path.read_bytes() == before and not ray.is_initialized()  # nothing overwritten, no Ray started
