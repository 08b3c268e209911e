"""The small parts of the training loop, each on its own: the batches of an epoch, the weight EMA, the
training state a checkpoint holds, the Job sent to workers, and the epoch row the tables store."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from helpers import load
from raygap import data, results
from raygap.loop import EMA, Job, Parts, kept_row
from raygap.methods import METHODS
from raygap.schema import as_dict

CPU = torch.device("cpu")


def numbered_split(n: int) -> data.Split:
    """Images whose every pixel holds their index, labels equal to the index: batches show what they hold."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return data.Split(x, torch.arange(n))


def indices(batches: data.Batches, epoch: int) -> list[int]:
    out = []
    for x, y in batches.epoch(epoch):
        assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), y)  # each image travels with its label
        out += y.tolist()
    return out


def test_each_epoch_is_a_replayable_shuffle_split_evenly_over_the_ranks():
    split = numbered_split(23)
    ranks = [data.Batches(split, batch_size=4, rank=r, world=2, seed=7, device=CPU) for r in range(2)]
    first, second = (indices(b, epoch=0) for b in ranks)
    assert ranks[0].epoch_len == 22 and len(first) == len(second) == 11  # the odd image out is left out
    assert not set(first) & set(second)
    assert sum(1 for _ in ranks[0].epoch(0)) == ranks[0].steps == 3
    assert indices(ranks[0], 0) == first  # a resumed run replays the epoch
    assert indices(ranks[0], 1) != first  # the next epoch is another shuffle
    assert indices(data.Batches(split, 4, 0, 2, seed=8, device=CPU), 0) != first


def test_the_ema_warms_up_then_holds_its_decay_and_copies_counters():
    module = nn.BatchNorm1d(3)
    ema = EMA(module, max_decay=0.5)
    start = ema.module.weight.clone()
    with torch.no_grad():
        module.weight.fill_(3.0)
    module.num_batches_tracked.fill_(5)
    ema.update(module)  # update 0: decay min(0.5, 1/10) = 0.1
    assert torch.allclose(ema.module.weight, 0.1 * start + 0.9 * 3.0)
    assert ema.module.num_batches_tracked.item() == 5
    for _ in range(20):
        ema.update(module)
    before = ema.module.weight.clone()
    with torch.no_grad():
        module.weight.fill_(-1.0)
    ema.update(module)  # past the warm-up: decay 0.5
    assert torch.allclose(ema.module.weight, 0.5 * before + 0.5 * -1.0)
    again = EMA(nn.BatchNorm1d(3), max_decay=0.5)
    again.load_state_dict(ema.state_dict())
    assert again.updates == ema.updates == 22 and torch.equal(again.module.weight, ema.module.weight)


def make_parts(seed: int, lr: float = 0.1, weight_decay: float = 0.0) -> Parts:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    return Parts(objective=None, module=module, attacked=module, net=module, compiled=False, optimizer=optimizer,
                 scheduler=scheduler, ema=EMA(module, 0.9))


def step(parts: Parts, x, y):
    loss = nn.functional.cross_entropy(parts.net(x), y)
    parts.optimizer.zero_grad()
    loss.backward()
    parts.optimizer.step()
    parts.scheduler.step()
    parts.ema.update(parts.module)


def test_a_run_restored_from_its_state_trains_on_exactly_as_the_uninterrupted_run():
    torch.manual_seed(0)
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(6)]
    straight, resumed = make_parts(1), make_parts(2)  # another start: load() must overwrite all of it
    for x, y in batches[:3]:
        step(straight, x, y)
    resumed.load(copy.deepcopy(straight.state()))
    for x, y in batches[3:]:
        step(straight, x, y)
        step(resumed, x, y)
    for a, b in zip(straight.state()["module"].values(), resumed.state()["module"].values()):
        assert torch.equal(a, b)
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** 6
    assert torch.equal(straight.evaluated[0].weight, resumed.evaluated[0].weight)  # the EMA's weights


def test_a_pbt_clone_takes_the_state_and_keeps_its_own_settings_on_the_schedule_reached():
    torch.manual_seed(0)
    parent = make_parts(1)
    for _ in range(3):
        step(parent, torch.randn(16, 4), torch.randint(0, 3, (16,)))
    clone = make_parts(2, lr=0.04, weight_decay=1e-3)  # its perturbed config: another rate and decay
    clone.load(copy.deepcopy(parent.state()), keep_settings=True)
    for a, b in zip(parent.state()["module"].values(), clone.state()["module"].values()):
        assert torch.equal(a, b)
    group, theirs = clone.optimizer.param_groups[0], parent.optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (pytest.approx(0.04 * 0.5 ** 3), 1e-3)  # step 3 of its schedule
    assert clone.scheduler.last_epoch == 3 and theirs["lr"] == pytest.approx(0.1 * 0.5 ** 3)
    first = group["params"][0]
    assert torch.equal(clone.optimizer.state[first]["momentum_buffer"],
                       parent.optimizer.state[theirs["params"][0]]["momentum_buffer"])


def test_a_job_travels_as_plain_data_and_gives_each_method_its_params(tmp_path):
    cfg = load("method=trades", "method.beta=3.0", storage=tmp_path)

    job = Job(as_dict(cfg), "trades", "train", None, str(tmp_path / "runs" / "t1"))
    assert (job.label, job.experiment_dir, job.trial_id) == ("trades", str(tmp_path / "runs" / "t1"), "t1")
    assert Job(**job.as_plain()) == job
    assert job.params.beta == 3.0 and job.training.lr == cfg.train.lr
    pretraining = Job(as_dict(cfg), "natural", "pretrain", None, str(tmp_path / "pre"), label="pretrain")
    assert pretraining.params == METHODS["natural"].Params() and pretraining.training.epochs == cfg.pretrain.epochs


def epoch_row(epoch: int, robust: float, losses: dict) -> results.EpochRow:
    return results.EpochRow(epoch=epoch, kept_epoch=epoch, lr=0.1, loss=1.0, clean_acc=0.9, robust_acc=robust,
                            clean_se=0.01, robust_se=0.01, kept_clean_acc=0.9, kept_robust_acc=robust,
                            images_per_s=10.0, mfu=None, train_seconds=1.0, wall_seconds=2.0, gpu_seconds=0.0,
                            cpu_seconds=2.0, finished_at=1.0, losses=losses, node=None)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_field_of_an_epoch_row_is_a_column_of_the_epochs_table(tmp_path, method):
    """A metric the table had no column for would vanish from Parquet and MLflow without a word."""
    losses = {part: 0.5 for part in METHODS[method].parts}
    row = epoch_row(1, 0.4, losses).as_row()
    columns = set(results.epochs_schema().names)
    assert set(row) <= columns, set(row) - columns
    assert {f.name for f in dataclasses.fields(results.EpochRow)} - {"losses"} <= columns
    results.write_epochs(str(tmp_path), "t1", {}, [row])
    back = results.read_table(str(tmp_path), "epochs").iloc[0]
    assert back["robust_acc"] == 0.4 and all(back[f"loss_{p}"] == 0.5 for p in losses)


def test_the_kept_epoch_is_the_last_or_the_most_robust_earliest_on_a_tie():
    history = [epoch_row(e, r, {}).as_row() for e, r in [(1, 0.3), (2, 0.5), (3, 0.5), (4, 0.4)]]
    assert kept_row(history, "last")["epoch"] == 4
    assert kept_row(history, "best")["epoch"] == 2
