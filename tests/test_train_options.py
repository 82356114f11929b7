"""Training options beyond the course protocol and the per-epoch logs (docs/design.md#training-options),
each against an independent reference: hand computations, autograd, sklearn."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import train_main
import utils
from conftest import cpu_trainer, one_line_error, train_argv
from lib.cli import UserError
from lib.epoch_log import CSV_COLUMNS, write_csv
from lib.optim import BalancedSampler, class_weights, make_criterion, make_optimizer, make_scheduler
from lib.train_options import training_protocol
from models import SimpleNet
from trainer import TrainingOptions

STEM = "fakes_dataset_SimpleNet_Adam"


def _run(data, work, *extra):
    """train_main.py in-process with Adam, batch 5; returns the last run of its JSON."""
    assert train_main.main(train_argv(data, work, "-o", "Adam", "-b", "5", *extra)) == 0
    return json.load(open(work / "out" / f"{STEM}.json"))[-1]


# ----------------------------------------------------------------------------- optimizer and schedule
def test_adamw_matches_the_update_written_out_by_hand():
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(5))
    start = weight.detach().clone()
    lr, decay, (b1, b2), eps = 0.01, 0.1, (0.9, 0.999), 1e-8
    optimizer = make_optimizer("AdamW", [weight], lr, 0.9, decay)
    grads = [torch.randn(5) for _ in range(3)]
    expected, m, v = start.double(), torch.zeros(5).double(), torch.zeros(5).double()
    for t, grad in enumerate(grads, 1):
        weight.grad = grad.clone()
        optimizer.step()
        g = grad.double()
        expected = expected * (1 - lr * decay)  # decoupled: the decay does not go through m and v
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        expected = expected - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    torch.testing.assert_close(weight.detach().double(), expected, rtol=1e-5, atol=1e-7)


def test_weight_decay_defaults():
    parse = train_main.build_parser().parse_args
    assert training_protocol(parse(["-o", "SGD"]))["weight_decay"] == 0.0
    assert training_protocol(parse(["-o", "AdamW"]))["weight_decay"] == 0.01  # torch's default
    assert training_protocol(parse(["-o", "Adam", "--weight_decay", "1e-4"]))["weight_decay"] == 1e-4


def _lrs(schedule, warmup, epochs, **kwargs):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(optimizer, schedule, warmup, epochs, **kwargs)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_then_cosine_per_epoch_by_hand():
    w, epochs = 2, 7
    hand = [0.1 * (e + 1) / (w + 1) for e in range(w)]
    hand += [0.1 * (1 + math.cos(math.pi * k / (epochs - w))) / 2 for k in range(epochs - w)]
    assert _lrs("cosine", w, epochs) == pytest.approx(hand, rel=1e-12)
    assert _lrs("cosine", 0, 4) == pytest.approx(
        [0.1 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    )
    assert _lrs("step", 1, 5, step_size=2, gamma=0.5) == pytest.approx([0.05, 0.1, 0.1, 0.05, 0.05])
    assert _lrs("none", 3, 5) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])


# ----------------------------------------------------------------------------- loss and sampler
def test_class_weighted_loss_is_the_hand_weighted_mean():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 8 + [1] * 4)
    weights = class_weights(labels)
    torch.testing.assert_close(weights, torch.tensor([12 / (2 * 8), 12 / (2 * 4)]))
    logits, batch = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 0, 1])
    nll = -torch.log_softmax(logits, 1)[torch.arange(6), batch]
    w = weights[batch]
    torch.testing.assert_close(make_criterion(0.0, weights)(logits, batch), (w * nll).sum() / w.sum())
    smoothed = -torch.log_softmax(logits, 1).mean(1)  # label smoothing eps: (1-eps) nll + eps * mean
    torch.testing.assert_close(make_criterion(0.2)(logits, batch), (0.8 * nll + 0.2 * smoothed).mean())


@pytest.mark.parametrize("weighted", [False, True])
def test_train_loss_is_the_epochs_mean_as_the_criterion_defines_it(weighted):
    """11 images in batches of 5, 5 and 1, a model that does not move (lr 0): the epoch's train loss
    is the plain mean of the per-sample losses, or with class weights their weighted mean
    sum(w nll) / sum(w) over the epoch; batch means times batch sizes gave neither."""
    torch.manual_seed(0)
    images, labels = torch.randn(11, 3, 8, 8), torch.tensor([0] * 8 + [1] * 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    weights = class_weights(labels) if weighted else None
    splits = [TensorDataset(images, labels)] * 3
    trainer = cpu_trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), splits, 5, channels_last="off")
    trainer.criterion = make_criterion(0.0, weights)
    with torch.no_grad():
        nll = -torch.log_softmax(model(images).double(), 1)[torch.arange(11), labels]
    w = torch.ones(11, dtype=torch.float64) if weights is None else weights.double()[labels]
    assert trainer.train_one_epoch()[0] == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-6)


def test_balanced_sampler_draws_classes_evenly_and_shards_like_distributed_sampler():
    labels = torch.tensor([0] * 30 + [1] * 3)
    one = BalancedSampler(labels, seed=1)
    one.set_epoch(4)
    drawn = list(one)
    assert len(drawn) == 33 and drawn == list(one)  # repeats for the same (seed, epoch)
    one.set_epoch(5)
    assert list(one) != drawn
    fakes = sum(int(labels[i]) for e in range(40) for i in (one.set_epoch(e) or one))
    assert abs(fakes / (40 * 33) - 0.5) < 0.05  # 9 % of the images, drawn half the time
    ranks = [BalancedSampler(labels, rank, 2, seed=1) for rank in range(2)]
    for sampler in ranks:
        sampler.set_epoch(4)
    assert [len(r) for r in ranks] == [17, 17]
    merged = [i for pair in zip(*ranks) for i in pair]
    assert merged == drawn + drawn[:1]  # padded to an even share, as DistributedSampler pads


@pytest.mark.parametrize("world_size", [1, 2])
def test_every_draw_of_an_oversampled_image_is_augmented_on_its_own(world_size):
    """--balance sampler draws with replacement: an image's first draw of the epoch keeps row
    ``index`` of the parameters (as without it), every further draw gets fresh ones; all processes
    together get exactly what one process gets."""
    from lib.batching import AugmentedBatchSampler, seeded_generator

    labels = torch.tensor([0] * 2 + [1] * 10)

    def draw(n, generator):
        return torch.rand((n, 2), generator=generator)

    def rows(rank, world):
        sampler = BalancedSampler(labels, rank, world, seed=1)
        sampler.set_epoch(3)
        batches = AugmentedBatchSampler(sampler, 4, 12, 5, draw)
        return [row for batch in batches for row in batch], list(sampler)

    one, order = rows(0, 1)
    params = draw(12, seeded_generator(5, 4)).tolist()
    assert [row[0] for row in one] == order and len(set(order)) < len(order)  # some images twice
    first = {i: order.index(i) for i in set(order)}
    assert all(row[1:] == params[row[0]] for k, row in enumerate(one) if first[row[0]] == k)
    for index in set(order):
        copies = [tuple(row[1:]) for row in one if row[0] == index]
        assert len(set(copies)) == len(copies), index
    shares = [rows(rank, world_size)[0] for rank in range(world_size)]
    assert [row for position in zip(*shares) for row in position] == one


# ----------------------------------------------------------------------------- gradient clipping
def test_clip_grad_scales_the_step_to_torchs_total_norm():
    torch.manual_seed(0)
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 0, 1, 1, 0])
    splits = [TensorDataset(images, labels)] * 3
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    reference = [p.detach().clone() for p in model.parameters()]
    copy = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    copy.load_state_dict(model.state_dict())
    nn.CrossEntropyLoss()(copy(images), labels).backward()
    grads = [p.grad for p in copy.parameters()]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    max_norm = 0.01
    assert norm > 10 * max_norm  # the clip is active
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = cpu_trainer(
        model,
        optimizer,
        splits,
        batch_size=6,
        channels_last="off",
        options=TrainingOptions(clip_grad=max_norm),
    )
    trainer.train_one_epoch()  # one batch of all six: the same gradient in any order
    for p, p0, g in zip(model.parameters(), reference, grads):
        torch.testing.assert_close(
            p.detach(), p0 - g * (max_norm / (norm.float() + 1e-6)), rtol=1e-4, atol=1e-7
        )
    step = torch.sqrt(
        sum(((p.detach() - p0).double() ** 2).sum() for p, p0 in zip(model.parameters(), reference))
    )
    assert step == pytest.approx(max_norm, rel=1e-4)


# ----------------------------------------------------------------------------- runs
def test_select_by_val_auc_picks_the_epoch_of_sklearns_best_auc(tmp_path, tiny_root):
    from sklearn.metrics import roc_auc_score

    run = _run(tiny_root, tmp_path, "-e", "3", "--select_by", "val_auc")
    assert run["protocol"]["select_by"] == "val_auc"
    auc, acc = run["val_auc"], run["val_acc"]
    assert acc.index(max(acc)) != auc.index(max(auc))  # control: on this data the two choices differ
    assert run["best_epoch"] == auc.index(max(auc)) + 1
    checkpoint = torch.load(tmp_path / "ck" / f"{STEM}.pt", weights_only=True)
    assert checkpoint["epoch"] == run["best_epoch"]
    model = SimpleNet()
    model.load_state_dict(checkpoint["model"])
    model.eval()
    val = utils.load_dataset("fakes_dataset", "val", tiny_root)
    with torch.no_grad():
        scores = [torch.softmax(model(val[i][0][None]), 1)[0, 1].item() for i in range(len(val))]
    assert roc_auc_score(val.labels.numpy(), scores) == pytest.approx(max(auc))
    assert checkpoint["val_acc"] == run["best_val_acc"] == acc[run["best_epoch"] - 1]


def test_options_recorded_and_eval_loss_stays_plain_cross_entropy(tmp_path, tiny_root):
    flags = ["-e", "1", "-o", "AdamW", "--weight_decay", "0.05", "--label_smoothing", "0.2"]
    flags += ["--clip_grad", "5", "--balance", "sampler"]
    assert train_main.main(train_argv(tiny_root, tmp_path, "-b", "5", *flags)) == 0
    run = json.load(open(tmp_path / "out" / "fakes_dataset_SimpleNet_AdamW.json"))[-1]
    protocol = run["protocol"]
    assert (protocol["optimizer"], protocol["weight_decay"], protocol["label_smoothing"]) == (
        "AdamW",
        0.05,
        0.2,
    )
    assert (protocol["clip_grad"], protocol["balance"]) == (5.0, "sampler")
    assert run["optimizer"]["params"]["weight_decay"] == 0.05
    model = SimpleNet()
    model.load_state_dict(
        torch.load(tmp_path / "ck" / "fakes_dataset_SimpleNet_AdamW.pt", weights_only=True)["model"]
    )
    model.eval()
    val = utils.load_dataset("fakes_dataset", "val", tiny_root)
    with torch.no_grad():
        logits = torch.cat([model(val[i][0][None]) for i in range(len(val))])
    plain = nn.functional.cross_entropy(logits.double(), val.labels).item()  # no smoothing
    assert run["val_loss"][0] == pytest.approx(plain, rel=1e-4)


def test_step_schedule_resumes_exactly_and_a_changed_option_is_refused(tmp_path, tiny_root, capsys):
    flags = ("--lr_schedule", "step", "--lr_step_size", "1", "--lr_gamma", "0.5", "--warmup_epochs", "1")
    whole = _run(tiny_root, tmp_path / "whole", "-e", "4", *flags)
    assert whole["lr"] == pytest.approx([0.0005, 0.001, 0.0005, 0.00025])
    _run(tiny_root, tmp_path / "cut", "-e", "2", *flags)
    with pytest.raises(UserError, match=r"--label_smoothing 0\.1 differs"):
        train_main.main(
            train_argv(
                tiny_root,
                tmp_path / "cut",
                "-o",
                "Adam",
                "-b",
                "5",
                "-e",
                "4",
                *flags,
                "--resume",
                "--label_smoothing",
                "0.1",
            )
        )
    resumed = _run(tiny_root, tmp_path / "cut", "-e", "4", *flags, "--resume")
    for key in ("lr", "train_loss", "val_loss", "test_acc", "val_auc", "best_epoch"):
        assert resumed[key] == whole[key], key
    with open(tmp_path / "cut" / "out" / f"{STEM}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]  # the resumed run's rows replaced, not repeated
    for row, i in zip(rows, range(4)):
        assert float(row["lr"]) == resumed["lr"][i] and float(row["val_loss"]) == resumed["val_loss"][i]
        assert float(row["test_auc"]) == resumed["test_auc"][i]


def test_cosine_records_its_length_so_a_longer_resume_is_refused(tmp_path, tiny_root):
    _run(tiny_root, tmp_path, "-e", "2", "--lr_schedule", "cosine")
    with pytest.raises(UserError, match="--epochs 3 differs from the run's 2"):
        train_main.main(
            train_argv(
                tiny_root, tmp_path, "-o", "Adam", "-b", "5", "-e", "3", "--lr_schedule", "cosine", "--resume"
            )
        )


# ----------------------------------------------------------------------------- the per-epoch CSV
def _fake_run(run_id, epochs):
    run = {"run_id": run_id, **{key: [0.5 * (e + 1) for e in range(epochs)] for key in CSV_COLUMNS[2:]}}
    run["train_loss"] = [1.0] * epochs
    run["val_auc"] = [None] * epochs  # single-class validation: an empty cell
    return run


def test_csv_keeps_other_runs_and_sets_aside_another_layout(tmp_path):
    path = tmp_path / "runs.csv"
    write_csv(str(path), _fake_run("a", 2))
    write_csv(str(path), _fake_run("b", 1))
    write_csv(str(path), _fake_run("a", 3))  # run a went on: its rows replaced, b's kept
    rows = list(csv.DictReader(open(path, newline="")))
    assert [(r["run_id"], r["epoch"]) for r in rows] == [("b", "1"), ("a", "1"), ("a", "2"), ("a", "3")]
    assert rows[0]["val_auc"] == "" and float(rows[3]["lr"]) == 1.5
    path.write_text("epoch,my_column\n1,x\n")
    with pytest.warns(UserWarning, match="moved aside"):
        write_csv(str(path), _fake_run("c", 1))
    assert len(list(tmp_path.glob("runs.csv.corrupt-*"))) == 1
    assert [r["run_id"] for r in csv.DictReader(open(path, newline=""))] == ["c"]


@pytest.mark.parametrize(
    "content",
    [b"run_id,epoch,lr,train_loss,train_acc,val_loss,val_acc,val_auc,test_loss,test_acc,test_auc\nx,1,2,3,4,5,6,7,8,9,10,11\n",
     b"run_id,epoch,lr,train_loss,train_acc,val_loss,val_acc,val_auc,test_loss,test_acc,test_auc\nx,1\n",
     b"run_id,epoch,lr,train_loss,train_acc,val_loss,val_acc,val_auc,test_loss,test_acc,test_auc\n\xff,1\n"],
    ids=["a-cell-too-many", "cells-missing", "not-utf8"],
)  # fmt: skip
def test_an_unreadable_csv_is_set_aside_and_a_killed_writes_temp_file_removed(tmp_path, content):
    """Rows of another width or bytes that are not UTF-8 raised a traceback after the epoch; the file
    is now set aside as a CSV of other columns is. A killed write's temp file goes too."""
    path = tmp_path / "runs.csv"
    path.write_bytes(content)
    (tmp_path / ".runs.csv.abc123.tmp").write_text("half a write")
    with pytest.warns(UserWarning, match="moved aside"):
        write_csv(str(path), _fake_run("c", 2))
    assert [r["epoch"] for r in csv.DictReader(open(path, newline=""))] == ["1", "2"]
    assert [p.name for p in tmp_path.glob("runs.csv.corrupt-*")] != [] and not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- flags and TensorBoard
@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--label_smoothing", "1"], "--label_smoothing"),
        (["--warmup_epochs", "2", "-e", "2"], "--warmup_epochs 2"),
        (["--lr_step_size", "2"], "--lr_schedule step"),
    ],
)
def test_contradictory_options_are_one_line_errors(capsys, tmp_path, flags, needle):
    one_line_error(capsys, train_main.main, train_argv(tmp_path, tmp_path, *flags), needle)


def test_tensorboard_without_the_package_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    argv = train_argv(tmp_path, tmp_path, "--tensorboard", str(tmp_path / "tb"))
    one_line_error(capsys, train_main.main, argv, "pip install tensorboard")
    assert not (tmp_path / "tb").exists()


def test_tensorboard_scalars_match_the_json(tmp_path, tiny_root):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tiny_root, tmp_path, "-e", "2", "--tensorboard", str(tmp_path / "tb"))
    (folder,) = (tmp_path / "tb").iterdir()
    assert folder.name == f"{STEM}-{run['run_id'][:8]}"
    events = EventAccumulator(str(folder))
    events.Reload()
    for tag, key in (("loss/val", "val_loss"), ("lr", "lr"), ("acc/train", "train_acc")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx(run[key], rel=1e-6)
