"""A crash never leaves a search that cannot resume: the Optuna journal's last record, cut short by a crash in
the middle of an append, is dropped with one line by the next driver; damage anywhere else is one line
naming the file, before Ray starts; a search killed at each crash point in turn, its files torn after
each kill, finishes with the trials asked for."""

import json
import pickle
import signal
import subprocess
import uuid

import optuna
import pytest
import ray
from optuna.storages.journal import JournalFileBackend

from helpers import run_main, tune_cli
from raygap import faults, results, study, tune_state
from raygap.errors import UserError
from raygap.recorder import LOST
from raygap.searcher import TUNE_TRIAL_ID

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


def tune_files(folder, session: str) -> None:
    """The files Tune saves for one session of a search, whole."""
    (folder / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": [], "runner_data": {}}))
    for name in (f"search_gen_state-{session}.json", f"searcher-state-{session}.pkl"):
        (folder / name).write_bytes(pickle.dumps({"state": list(range(50))}))


def test_tune_state_cut_short_is_moved_aside_with_one_line_and_whole_state_is_left_to_tune(tmp_path, capsys):
    experiment = tmp_path / "search"
    experiment.mkdir()
    (experiment / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    assert not tune_state.restorable(str(experiment))  # Tune wrote tuner.pkl, the driver died before a state
    assert "has no experiment state beside it" in capsys.readouterr().out
    assert sorted(p.name for p in experiment.iterdir()) == ["torn-tune-state"]

    (experiment / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    tune_files(experiment, "2026-12-01_10-00-00")
    tune_files(experiment, "2026-12-01_11-00-00")
    assert tune_state.restorable(str(experiment)) and capsys.readouterr().out == ""  # whole: Tune's to read

    for torn in ("experiment_state-2026-12-01_11-00-00.json", "searcher-state-2026-12-01_11-00-00.pkl"):
        path = experiment / torn
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
        assert not tune_state.restorable(str(experiment))
        line = capsys.readouterr().out
        assert line.count("\n") == 1 and f"{path} was cut short by a crash ({len(whole) // 2} bytes" in line
        assert "torn-tune-state/" in line and "goes on over its study and tables" in line
        assert not [p for p in experiment.iterdir() if p.is_file()]  # Tune finds nothing to restore
        assert (experiment / "torn-tune-state" / torn).read_bytes() == whole[: len(whole) // 2]  # kept, as it was
        (experiment / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
        tune_files(experiment, "2026-12-01_11-00-00")


def tear(experiment):
    """Cut short the last write of each file a crash can leave torn: the journal's last record, Tune's newest
    experiment state, the lease; and leave a part's temporary file half-written beside the table."""
    torn = []
    journal = experiment / "optuna.journal"
    if journal.exists():
        with open(journal, "ab") as fh:
            fh.write(journal.read_bytes().splitlines(keepends=True)[-1][:30])
        torn.append("journal")
    states = sorted(experiment.glob("experiment_state-*.json"))
    if states:
        states[-1].write_bytes(states[-1].read_bytes()[: states[-1].stat().st_size // 2])
        torn.append("experiment state")
    lease = experiment / "driver.lock"
    if lease.exists():  # a killed driver does not release it
        lease.write_bytes(lease.read_bytes()[:20])
        torn.append("lease")
    parts = experiment / "trials"
    if parts.is_dir():
        (parts / f".{next(parts.glob('*.parquet')).name}.{uuid.uuid4().hex}.tmp").write_bytes(b"PAR1 half a part")
        torn.append("part")
    return torn


@pytest.mark.slow
def test_a_search_killed_at_each_crash_point_with_its_files_torn_finishes_with_the_trials_asked(tmp_path,
                                                                                                   natural_digits):
    """The same command, killed (SIGKILL to all its processes) at each point of faults.CRASH_POINTS in turn,
    the last writes of its files torn after each kill, then run once more to its end."""
    args = ["name=crashes", "tune.num_samples=3", "tune.scheduler.name=fifo", "final_eval.n=50"]
    experiment = tmp_path / "crashes"
    outputs, torn = [], set()
    for point in [*faults.CRASH_POINTS, None]:
        env = {"RAYGAP_TEST_CRASH": point} if point else {}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            run = tune_cli(tmp_path, natural_digits[1], *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
        output, _ = run.communicate(timeout=900)
        outputs.append(output)
        assert "Traceback" not in output, output[-3000:]
        if point is None:
            assert run.returncode == 0, output[-3000:]
            break
        assert run.returncode == -signal.SIGKILL, f"{point} was not reached:\n{output[-3000:]}"
        torn.update(tear(experiment))
    assert torn == {"journal", "experiment state", "lease", "part"}
    said = "".join(outputs)
    assert "[study] the last record of" in said and "[lock] the lease" in said
    assert "[search] Tune's state cannot be restored" in said and "trials are done; a new Tune run" in said

    trials, epochs = results.read_table(experiment, "trials"), results.read_table(experiment, "epochs")
    completed = trials[trials.status == "completed"]
    assert len(completed) == 3  # exactly the trials asked for
    assert (trials[trials.status != "completed"].error == LOST).all()  # the others: lost at a kill, and said so
    assert not epochs.duplicated(["trial_id", "epoch"]).any()  # nothing counted twice
    assert list(epochs[epochs.trial_id.isin(completed.trial_id)].groupby("trial_id").epoch.max()) == [2, 2, 2]
    assert completed.finalist.fillna(False).sum() == 1 and completed.test_robust_acc.notna().sum() == 1
    # the tables and the study agree: the study's completed trials are the table's, by name and by result
    optuna_study = optuna.load_study(study_name="crashes", storage=study.open_storage("", str(experiment)))
    told = {t.user_attrs[TUNE_TRIAL_ID]: t.value for t in optuna_study.trials
            if t.state == optuna.trial.TrialState.COMPLETE}
    assert told == pytest.approx(dict(zip(completed.trial_id, completed.kept_robust_acc)))
    assert completed.params.nunique() == 3  # a Tune run after a lost state does not draw the same points again
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in optuna_study.trials]
