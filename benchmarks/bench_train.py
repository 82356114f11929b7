"""How fast does training and evaluation run, against what the model alone could do?

For each model (SimpleNet, and XceptionBased built with ``pretrained=False``: weights do not change
speed), on the same data (demo data generated into a temp folder, or ``--data_root``):

(a) model only: training steps and eval forward passes on random tensors already in memory, with
    the trainer's own settings (memory format, autocast, compile): the practical compute ceiling;
(b) end to end: ``Trainer.train_one_epoch`` and ``Trainer.evaluate_model_on_dataloader`` with the
    defaults train_main.py uses (``memory.apply_image_cache(datasets, "auto")``, default
    ``num_workers``, default ``channels_last``, the trainer's default eval batch);
(c) the naive course loop: ``DataLoader`` with default arguments (num_workers=0), PIL decoding every
    epoch with the course's torchvision v1 transforms on PIL images, float32 NCHW, a per-batch
    ``.item()``, ``torch.no_grad`` for eval.

It prints images/s of each, b/a (pipeline efficiency) and b/c (speed-up over the naive loop; the
epoch figure is train + val + test of the whole data), and peak RSS, and writes them to
``--out`` (default ``out/bench_train.json``: one object per model, merged into the file).

Measurement: each loop is warmed up first ((a) one step at each batch size, (b) its loaders built,
their workers started and a first batch taken, (c) one step and one eval batch at its batch size;
not in ``--smoke``). The three loops alternate in ``--repeats`` rounds and each figure is the best
round (other processes only ever slow a round down); the median is kept in the JSON too. SimpleNet runs
whole splits. XceptionBased is slow on a CPU, so it runs a fixed number of
images (``--xception_train_images``/``--xception_eval_images``, class ratio kept) and its epoch
figure is computed from the measured images/s and the full split sizes.

Usage::

    python benchmarks/bench_train.py                       # the figures of benchmarks/README.md
    python benchmarks/bench_train.py --smoke               # tiny, seconds (the test suite)
    python benchmarks/bench_train.py --models SimpleNet --levers   # also measure each lever
    python benchmarks/bench_train.py --rss_only SimpleNet  # only the full-size cache RSS check
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from faces_dataset import FacesDataset, read_rgb_image
from lib import metrics
from lib.cli import (
    ArgumentParser,
    UserError,
    add_debug_flag,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from lib.fileio import atomic_write_json, read_json_object
from lib.memory import apply_image_cache, current_rss_bytes, proc_bytes, ru_maxrss_mb
from lib.transforms import NORMALIZE_MEAN, NORMALIZE_STD
from train_main import make_optimizer, trainer_options  # as train_main.py trains
from trainer import Trainer
from utils import DATASET_NAMES, MODEL_NAMES, get_device, get_transforms, load_dataset, load_model, set_seed

REQUIRED_KEYS = (
    "model_only_train_ips",
    "end_to_end_train_ips",
    "naive_train_ips",
    "model_only_eval_ips",
    "end_to_end_eval_ips",
    "naive_eval_ips",
    "train_efficiency",
    "eval_efficiency",
    "epoch_speedup",
    "peak_rss_mb",
)


# ----------------------------------------------------------------------------- memory
def peak_rss_mb() -> float:
    """This process's peak resident set size since the last ``reset_peak_rss`` (MiB)."""
    peak = proc_bytes("/proc/self/status", "VmHWM")
    if peak is None:
        return ru_maxrss_mb(resource.getrusage(resource.RUSAGE_SELF))
    return peak / 1024**2


def current_rss_mb() -> float:
    """This process's resident set size now (MiB; NaN where unknown)."""
    return current_rss_bytes() / 1024**2 or float("nan")


def child_pids() -> list[int]:
    """Pids of this process's children (DataLoader workers), from /proc (Linux)."""
    pids = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as handle:
                pids += [int(p) for p in handle.read().split()]
    except OSError:
        pass
    return pids


def private_mb(pid: int) -> float:
    """Memory only process ``pid`` holds (Private_Clean + Private_Dirty, MiB): a forked worker's
    RSS also counts every page it shares with its parent, so RSS would count those twice."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return 0.0
    return total / 1024.0


def reset_peak_rss() -> bool:
    """Reset the peak (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- data
class CourseFacesDataset(Dataset):
    """The course's data path: decode the PNG with PIL at every access and apply the course's
    torchvision v1 transforms to the PIL image (train: RandomCrop(256, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize; val/test: ToTensor, Normalize)."""

    def __init__(self, faces: FacesDataset, train: bool):
        self.faces = faces
        steps = [T.RandomCrop(256, padding=4), T.RandomHorizontalFlip()] if train else []
        self.transform = T.Compose(steps + [T.ToTensor(), T.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)])

    def __len__(self):
        return len(self.faces)

    def __getitem__(self, index):
        path, label = self.faces.path_and_label(index)
        return self.transform(read_rgb_image(path)), label


def head(dataset: FacesDataset, n: int | None) -> FacesDataset:
    """The first ``n`` images of a split, keeping its real:fake ratio (``None``/0: all of it)."""
    if not n or n >= len(dataset):
        return dataset
    n_real = min(
        len(dataset.real_image_names), max(1, round(n * len(dataset.real_image_names) / len(dataset)))
    )
    n_fake = min(len(dataset.fake_image_names), max(0, n - n_real))
    sub = FacesDataset(dataset.root_path, transform=dataset.transform)
    sub.real_image_names = sub.real_image_names[:n_real]
    sub.fake_image_names = sub.fake_image_names[:n_fake]
    return sub


def prepare_data(args, workdir: str) -> str:
    """The data root: ``--data_root``, or demo data generated into ``workdir``."""
    if args.data_root:
        if not os.path.isdir(os.path.join(args.data_root, args.dataset)):
            raise UserError(
                f"--data_root {args.data_root}: no {args.dataset}/ folder in it; make demo "
                f"data with: python make_demo_datasets.py --out {args.data_root}"
            )
        return args.data_root
    import make_demo_datasets

    root = os.path.join(workdir, "data")
    print(f"generating demo {args.dataset} at scale {args.scale} in {root} ...", file=sys.stderr)
    try:
        make_demo_datasets.generate(
            root, seed=args.seed, scale=args.scale, datasets=[args.dataset], progress=not args.no_progress
        )
    except make_demo_datasets.DemoRequestError as error:  # names the flag (--scale, --seed)
        raise UserError(str(error)) from None
    return root


def make_trainer(
    name: str,
    args,
    splits: dict,
    device: torch.device,
    out_dir: str,
    checkpoint_dir: str,
    batch_size: int | None = None,
    **overrides,
) -> Trainer:
    """The Trainer of (a), (b), the levers and the RSS check: a random-init model (seeded, with
    ``--activation_checkpointing`` applied to XceptionBased) and the fused Adam train_main.py
    builds, with the benchmark's flags; ``overrides`` replace Trainer keyword arguments."""
    set_seed(args.seed)
    model = load_model(name, pretrained=False)
    if args.activation_checkpointing and hasattr(model, "set_activation_checkpointing"):
        model.set_activation_checkpointing(True)
    options = dict(
        trainer_options(args, device), progress=False, out_dir=out_dir, checkpoint_dir=checkpoint_dir
    )
    options.update(overrides)
    return Trainer(
        model,
        make_optimizer("Adam", model.parameters(), args.lr, 0.9),
        nn.CrossEntropyLoss(),
        batch_size or args.batch_size,
        splits["train"],
        splits["val"],
        splits["test"],
        **options,
    )


# ----------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """The batch sizes of one pass over ``n`` images (the last one may be smaller)."""
    return [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])


class ModelOnly:
    """(a): the trainer's own step on random tensors already on the device, in its memory format."""

    def __init__(self, trainer: Trainer, n_train: int, n_eval: list[int], seed: int):
        """``n_eval``: the sizes of the eval splits (each is batched on its own, as the trainer does)."""
        self.trainer = trainer
        self.generator = torch.Generator().manual_seed(seed)
        self.eval_splits = list(n_eval)
        self.train_plan = batch_sizes(n_train, trainer.batch_size)
        self.eval_plan = [size for n in n_eval for size in batch_sizes(n, trainer.eval_batch_size)]
        self.train_batches = {s: self._batch(s) for s in set(self.train_plan)}
        self.eval_batches = {s: self._batch(s) for s in set(self.eval_plan)}

    def _batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random normalised-like images in the trainer's layout, and labels, on its device."""
        t = self.trainer
        images = torch.randn((size, 3, 256, 256), generator=self.generator).to(t.device)
        labels = torch.randint(0, 2, (size,), generator=self.generator).to(t.device)
        return images.contiguous(memory_format=t.memory_format), labels

    def train_step(self, size: int) -> torch.Tensor:
        t = self.trainer
        images, labels = self.train_batches[size]
        t.optimizer.zero_grad(set_to_none=True)
        with t._autocast():
            loss = t.criterion(t.train_forward(images), labels)
        loss.backward()
        t.optimizer.step()
        return loss.detach()

    def train(self) -> float:
        """Seconds for the steps of one pass."""
        self.trainer.ddp_model.train()
        start = time.perf_counter()
        losses = [self.train_step(size) for size in self.train_plan]
        torch.stack(losses).sum().item()
        _sync(self.trainer.device)
        return time.perf_counter() - start

    def eval(self, inference_mode: bool = True, eval_batch_size: int | None = None) -> float:
        """Seconds for the forward passes over the eval splits (``eval_batch_size``: another
        batch size than the trainer's, for the lever measurements)."""
        t = self.trainer
        plan = self.eval_plan
        if eval_batch_size:
            plan = [s for n in self.eval_splits for s in batch_sizes(n, eval_batch_size)]
            for size in set(plan) - set(self.eval_batches):
                self.eval_batches[size] = self._batch(size)
        t.model.eval()
        start = time.perf_counter()
        context = torch.inference_mode if inference_mode else torch.no_grad
        with context():
            outs = []
            for size in plan:
                images, _ = self.eval_batches[size]
                with t._autocast():
                    outs.append(t.eval_forward(images).float())
            torch.cat(outs).sum().item()
        _sync(t.device)
        return time.perf_counter() - start

    def warm_up(self) -> None:
        self.trainer.ddp_model.train()
        for size in sorted(self.train_batches):
            self.train_step(size)
        self.trainer.model.eval()
        with torch.inference_mode():
            for size in sorted(self.eval_batches):
                images, _ = self.eval_batches[size]
                with self.trainer._autocast():
                    self.trainer.eval_forward(images)
        _sync(self.trainer.device)


class NaiveLoop:
    """(c): the course loop: default DataLoader, PIL + v1 transforms, fp32 NCHW, ``.item()`` per
    batch, ``torch.no_grad`` for eval."""

    def __init__(self, model: nn.Module, faces: dict, batch_size: int, device: torch.device, lr: float):
        self.model = model.to(device)
        self.device = device
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.criterion = nn.CrossEntropyLoss()
        self.train_loader = DataLoader(
            CourseFacesDataset(faces["train"], train=True), batch_size=batch_size, shuffle=True
        )
        self.eval_loaders = [
            DataLoader(CourseFacesDataset(faces[s], train=False), batch_size=batch_size)
            for s in ("val", "test")
        ]

    def train(self) -> float:
        self.model.train()
        start = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        for images, labels in self.train_loader:
            images, labels = images.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            outputs = self.model(images)
            loss = self.criterion(outputs, labels)
            loss.backward()
            self.optimizer.step()
            total_loss += loss.item() * labels.shape[0]
            correct += (outputs.argmax(1) == labels).sum().item()
            seen += labels.shape[0]
        return time.perf_counter() - start

    def eval(self) -> float:
        self.model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            for loader in self.eval_loaders:
                total_loss, correct = 0.0, 0
                for images, labels in loader:
                    images, labels = images.to(self.device), labels.to(self.device)
                    outputs = self.model(images)
                    total_loss += self.criterion(outputs, labels).item() * labels.shape[0]
                    correct += (outputs.argmax(1) == labels).sum().item()
        return time.perf_counter() - start

    def warm_up(self) -> None:
        """One training step (Adam's state included) and one eval batch at the loop's real batch
        sizes, on the first batch of each of its loaders."""
        self.model.train()
        images, labels = (t.to(self.device) for t in next(iter(self.train_loader)))
        self.optimizer.zero_grad()
        self.criterion(self.model(images), labels).backward()
        self.optimizer.step()
        self.model.eval()
        with torch.no_grad():
            self.model(next(iter(self.eval_loaders[0]))[0].to(self.device))
        _sync(self.device)


def warm_up_loaders(trainer: Trainer, data: dict) -> None:
    """(b)'s warm-up (its model is the one (a) warms): build the trainer's train, val and test
    loaders, which starts their persistent workers (on CUDA the cache moves to the GPU), and take
    the first batch of each to the device."""
    for split in ("train", "val", "test"):
        next(iter(trainer._batches(data[split], train=split == "train")))
    _sync(trainer.device)


def end_to_end_eval(trainer: Trainer, data: dict) -> None:
    """(b)'s eval: the trainer's own evaluation of the val and the test split."""
    trainer.evaluate_model_on_dataloader(data["val"])
    trainer.evaluate_model_on_dataloader(data["test"])


# ----------------------------------------------------------------------------- one model
def _summary(times: list[float], n: int) -> tuple[float, float]:
    """(best, median) images/s of timed passes over ``n`` images."""
    rates = [n / max(t, 1e-9) for t in times]
    return max(rates), statistics.median(rates)


def measured_splits(name: str, args, root: str) -> tuple[dict, dict]:
    """The data one model is measured on: each split cut to the model's ``--*_images`` (class
    ratio kept; eval images half val, half test). Returns (whole split sizes, measured datasets)."""
    is_xception = name == "XceptionBased"
    n_train = args.xception_train_images if is_xception else args.simplenet_train_images
    n_eval = args.xception_eval_images if is_xception else args.simplenet_eval_images
    full = {s: load_dataset(args.dataset, s, root) for s in ("train", "val", "test")}
    data = {
        "train": head(full["train"], n_train),
        "val": head(full["val"], (n_eval + 1) // 2 if n_eval else None),
        "test": head(full["test"], max(1, n_eval // 2) if n_eval else None),
    }
    return {s: len(d) for s, d in full.items()}, data


def build_loops(
    name: str, args, data: dict, device: torch.device, workdir: str
) -> tuple[Trainer, ModelOnly, NaiveLoop | None]:
    """The three loops of one model on ``data``: returns the trainer of (b), the model-only loop
    (a) on that trainer, and the naive loop (c) on its own seeded model (None with --skip_naive)."""
    trainer = make_trainer(
        name, args, data, device, os.path.join(workdir, "out"), os.path.join(workdir, "checkpoints")
    )
    model_only = ModelOnly(trainer, len(data["train"]), [len(data["val"]), len(data["test"])], args.seed)
    set_seed(args.seed)
    naive = (
        None
        if args.skip_naive
        else NaiveLoop(load_model(name, pretrained=False), data, args.batch_size, device, args.lr)
    )
    return trainer, model_only, naive


def warm_up_loops(
    args, trainer: Trainer, model_only: ModelOnly, naive: NaiveLoop | None, data: dict
) -> float:
    """Warm up (a), (b) and (c) (nothing in --smoke); returns the seconds it took."""
    start = time.perf_counter()
    if not args.smoke:
        model_only.warm_up()
        warm_up_loaders(trainer, data)
        if naive:
            naive.warm_up()
    return time.perf_counter() - start


def time_loops(
    name: str,
    args,
    trainer: Trainer,
    model_only: ModelOnly,
    naive: NaiveLoop | None,
    data: dict,
    device: torch.device,
) -> dict:
    """The three loops alternated in ``--repeats`` rounds; returns the seconds of each pass, per
    loop and part (``a_train`` ... ``c_eval``; (c)'s lists stay empty without the naive loop)."""
    steps = {
        "a_train": model_only.train,
        "b_train": functools.partial(timed, trainer.train_one_epoch, device),
        "c_train": naive.train if naive else None,
        "a_eval": model_only.eval,
        "b_eval": functools.partial(timed, functools.partial(end_to_end_eval, trainer, data), device),
        "c_eval": naive.eval if naive else None,
    }
    times = {key: [] for key in steps}
    times.update(
        run_rounds({k: fn for k, fn in steps.items() if fn}, args.repeats, f"{name} rounds", args.no_progress)
    )
    return times


def loop_rates(times: dict, measured: dict) -> dict:
    """(best, median) images/s of each loop and part that ran (``a_train`` ... ``c_eval``), from
    the seconds of ``time_loops`` and the measured split sizes."""
    n_eval = measured["val"] + measured["test"]
    rates = {}
    for loop in ("a", "b", "c"):
        if not times[f"{loop}_train"]:
            continue
        rates[f"{loop}_train"] = _summary(times[f"{loop}_train"], measured["train"])
        rates[f"{loop}_eval"] = _summary(times[f"{loop}_eval"], n_eval)
    return rates


def headline_figures(rates: dict, split_sizes: dict) -> dict:
    """The JSON figures from the best images/s of each loop: images/s, b/a efficiencies and the b/c
    speed-ups (None without (c)); the epoch speed-up is over the whole splits' sizes."""
    naive = "c_train" in rates
    out = {
        "model_only_train_ips": rates["a_train"][0],
        "end_to_end_train_ips": rates["b_train"][0],
        "naive_train_ips": rates["c_train"][0] if naive else None,
        "model_only_eval_ips": rates["a_eval"][0],
        "end_to_end_eval_ips": rates["b_eval"][0],
        "naive_eval_ips": rates["c_eval"][0] if naive else None,
    }
    out["train_efficiency"] = out["end_to_end_train_ips"] / out["model_only_train_ips"]
    out["eval_efficiency"] = out["end_to_end_eval_ips"] / out["model_only_eval_ips"]
    n_eval_full = split_sizes["val"] + split_sizes["test"]

    def epoch_seconds(train_ips, eval_ips):
        return split_sizes["train"] / train_ips + n_eval_full / eval_ips

    out["epoch_speedup"] = (
        epoch_seconds(out["naive_train_ips"], out["naive_eval_ips"])
        / epoch_seconds(out["end_to_end_train_ips"], out["end_to_end_eval_ips"])
        if naive
        else None
    )
    out["train_speedup"] = out["end_to_end_train_ips"] / out["naive_train_ips"] if naive else None
    out["eval_speedup"] = out["end_to_end_eval_ips"] / out["naive_eval_ips"] if naive else None
    return out


def paired_median_ratios(times: dict) -> dict:
    """b/a and b/c of the same round, median over the rounds (robust to slow load drift); returns
    them keyed ``b/a_train`` ... (the b/c ones only where (c) ran)."""
    return {
        f"{num}/{den}_{part}": statistics.median(
            t_den / t_num for t_num, t_den in zip(times[f"{num}_{part}"], times[f"{den}_{part}"])
        )
        for num, den in (("b", "a"), ("b", "c"))
        for part in ("train", "eval")
        if times[f"{den}_{part}"]
    }


def train_config(
    args,
    device: torch.device,
    trainer: Trainer,
    split_sizes: dict,
    measured: dict,
    cached: list[bool],
    seconds: dict,
    rss_reset: bool,
) -> dict:
    """The JSON ``config`` of one model's figures: data, loop settings, the cache and warm-up
    ``seconds``, the statistic and the machine; returns it."""
    config = {
        "dataset": args.dataset,
        "split_sizes": split_sizes,
        "measured_images": measured,
        "whole_splits": measured == split_sizes,
        "epoch_speedup_from": "measured epochs"
        if measured == split_sizes
        else "measured images/s scaled to the whole splits",
        "batch_size": args.batch_size,
        "eval_batch_size": trainer.eval_batch_size,
        "optimizer": f"Adam lr {args.lr}",
        "device": str(device),
        "amp": trainer.amp,
        "channels_last": trainer.channels_last,
        "compile": args.compile,
        "activation_checkpointing": bool(getattr(trainer.model, "activation_checkpointing", False)),
        "num_workers": trainer.num_workers,
        "cache_images": args.cache_images,
        "cached_splits": cached,
        "cache_seconds": seconds["cache"],
        "warm_up_seconds": seconds["warm_up"],
        "repeats": args.repeats,
        "statistic": "best of the repeats (median_ips: the medians)",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "peak_rss_scope": "this benchmark process during this model's section (all three loops' "
        "models and the decoded cache of the measured images)"
        if rss_reset
        else "whole benchmark process (peak could not be reset)",
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if device.type == "cuda":
        config["cuda_device"] = torch.cuda.get_device_name(device)
        config["cuda_max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    return config


def bench_model(name: str, args, root: str, device: torch.device, workdir: str) -> dict:
    """Measure (a), (b), (c) for one model; returns its JSON object."""
    gc.collect()
    rss_reset = reset_peak_rss()
    split_sizes, data = measured_splits(name, args, root)
    measured = {s: len(d) for s, d in data.items()}
    start = time.perf_counter()
    cached = apply_image_cache(list(data.values()), args.cache_images, progress=False)
    seconds = {"cache": time.perf_counter() - start}
    trainer, model_only, naive = build_loops(name, args, data, device, workdir)
    seconds["warm_up"] = warm_up_loops(args, trainer, model_only, naive, data)
    times = time_loops(name, args, trainer, model_only, naive, data, device)
    rates = loop_rates(times, measured)
    out = headline_figures(rates, split_sizes)
    out["peak_rss_mb"] = peak_rss_mb()
    out["median_ips"] = {k: v[1] for k, v in rates.items()}
    out["paired_median_ratios"] = paired_median_ratios(times)
    out["config"] = train_config(args, device, trainer, split_sizes, measured, cached, seconds, rss_reset)
    if args.levers:
        out["levers"] = measure_levers(name, args, device, trainer, data)
    del trainer, model_only, naive
    gc.collect()
    return out


def timed(fn, device: torch.device) -> float:
    """Seconds ``fn()`` takes, with the device's queued work finished."""
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def run_rounds(tasks: dict, repeats: int, desc: str, no_progress: bool) -> dict:
    """Run ``tasks`` (each returns the seconds of one pass) in turn, ``repeats`` rounds, with a
    progress bar; returns each task's seconds, one per round. Alternating rounds spread a
    passing load over all tasks alike."""
    times = {key: [] for key in tasks}
    bar = tqdm(
        total=repeats * len(tasks), desc=desc, unit="pass", disable=no_progress, file=sys.stderr, leave=False
    )
    for _ in range(repeats):
        for key, fn in tasks.items():
            times[key].append(fn())
            bar.update()
    bar.close()
    return times


# ----------------------------------------------------------------------------- levers
def with_threads(fn, threads: int):
    """``fn`` run with ``threads`` torch threads (the old number restored); returns that wrapper."""

    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)

    return run


def measure_levers(name, args, device, trainer: Trainer, data) -> dict:
    """Model-only images/s with and without each lever, measured in alternating rounds (best of
    ``max(3, --repeats)``), and the per-image data costs.

    Variants: NCHW vs channels-last (training and eval), eval under ``torch.no_grad`` instead of
    ``torch.inference_mode``, eval batch x2 and x4, one torch thread instead of all, and with
    ``--levers_compile`` torch.compile (its compile time reported apart).
    """
    n_train = len(data["train"])
    eval_splits = [len(data["val"]), len(data["test"])]
    n_eval = sum(eval_splits)

    def build(channels_last, compile_model=False):
        t = make_trainer(
            name,
            args,
            data,
            device,
            trainer.out_dir,
            trainer.checkpoint_dir,
            channels_last=channels_last,
            compile=compile_model,
        )
        return ModelOnly(t, n_train, eval_splits, args.seed)

    nchw, last = build("off"), build("on")
    eval_bs = last.trainer.eval_batch_size
    tasks = {
        ("nchw", "train"): nchw.train,
        ("nchw", "eval"): nchw.eval,
        ("channels_last", "train"): last.train,
        ("channels_last", "eval"): last.eval,
        ("channels_last", "eval_no_grad"): lambda: last.eval(inference_mode=False),
    }
    for factor in (2, 4):
        tasks[(f"eval_batch_x{factor}", "eval")] = lambda f=factor: last.eval(eval_batch_size=eval_bs * f)
    if device.type == "cpu" and torch.get_num_threads() > 1:
        tasks[("threads_1", "train")] = with_threads(last.train, 1)
        tasks[("threads_1", "eval")] = with_threads(last.eval, 1)
    compile_seconds = None
    if args.levers_compile:
        start = time.perf_counter()
        compiled = build("on", compile_model=True)
        compiled.warm_up()
        compile_seconds = time.perf_counter() - start
        tasks[("compile", "train")], tasks[("compile", "eval")] = compiled.train, compiled.eval
    for m in (nchw, last):
        m.warm_up()
    for factor in (2, 4):
        last.eval(eval_batch_size=eval_bs * factor)  # warm-up of the bigger batches
    times = run_rounds(tasks, max(3, args.repeats), f"{name} levers", args.no_progress)
    levers: dict = {}
    for (variant, part), seconds in times.items():
        n = n_train if part == "train" else n_eval
        levers.setdefault(variant, {})[f"{part}_ips"] = n / max(min(seconds), 1e-9)
    if compile_seconds is not None:
        levers["compile"]["compile_and_warm_up_seconds"] = compile_seconds
    levers["data_ms_per_image"] = data_costs(data["train"], args.batch_size)
    return levers


def data_costs(train: FacesDataset, batch_size: int) -> dict:
    """Milliseconds per image of each way of producing a normalised training batch: the course
    path (PIL decode + v1 transforms), decoding to uint8, and the cached path's gather, augment and
    normalise-to-channels-last (best of 5)."""
    from lib.transforms import normalize_batch

    n = min(len(train), batch_size)
    course = CourseFacesDataset(train, train=True)
    start = time.perf_counter()
    for i in range(n):
        course[i]
    pil_v1 = (time.perf_counter() - start) / n
    uncached = FacesDataset(train.root_path, transform=train.transform)
    uncached.real_image_names, uncached.fake_image_names = train.real_image_names, train.fake_image_names
    start = time.perf_counter()
    uncached.load_uint8_batch(torch.arange(n))
    decode = (time.perf_counter() - start) / n
    cache = train.cache_images(progress=False)
    indices = torch.randperm(len(train))[:n]
    batched = get_transforms("train").batched()
    params = batched.draw(n, torch.Generator().manual_seed(0))
    best = {"gather": math.inf, "augment": math.inf, "normalize_channels_last": math.inf}
    for _ in range(5):
        t0 = time.perf_counter()
        batch = cache[indices]
        t1 = time.perf_counter()
        batch = batched.augment(batch, params)
        t2 = time.perf_counter()
        normalize_batch(batch, torch.channels_last)
        t3 = time.perf_counter()
        for key, seconds in (("gather", t1 - t0), ("augment", t2 - t1), ("normalize_channels_last", t3 - t2)):
            best[key] = min(best[key], seconds / n)
    return {
        "pil_decode_and_v1_transforms": 1e3 * pil_v1,
        "decode_to_uint8": 1e3 * decode,
        **{f"cached_{k}": 1e3 * v for k, v in best.items()},
    }


# ----------------------------------------------------------------------------- full-size RSS check
class SyntheticFaces(Dataset):
    """A stand-in for a full-size split (no files): uint8 images made on the fly, cacheable like
    ``FacesDataset`` (same attributes the trainer and ``apply_image_cache`` use)."""

    def __init__(self, n_real: int, n_fake: int, train: bool, name: str):
        self.real_image_names = [f"r{i}" for i in range(n_real)]
        self.fake_image_names = [f"f{i}" for i in range(n_fake)]
        self.transform = get_transforms("train" if train else "val")
        self.root_path = f"<synthetic {name}>"
        self._cache = None
        self._image = torch.randint(
            0, 256, (3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(len(name))
        )

    def __len__(self):
        return len(self.real_image_names) + len(self.fake_image_names)

    @property
    def labels(self):
        return torch.cat(
            [
                torch.zeros(len(self.real_image_names), dtype=torch.long),
                torch.ones(len(self.fake_image_names), dtype=torch.long),
            ]
        )

    @property
    def cached(self):
        return self._cache is not None

    def load_uint8(self, index):
        if self._cache is not None:
            return self._cache[index]
        return self._image.roll(int(index) % 256, dims=2)  # "decoding": a fresh tensor

    def load_uint8_batch(self, indices):
        if self._cache is not None:
            return self._cache[indices]
        return torch.stack([self.load_uint8(int(i)) for i in indices])

    def cache_images(self, progress: bool = True):
        if self._cache is None:
            cache = torch.empty((len(self), 3, 256, 256), dtype=torch.uint8)
            for start in range(0, len(self), 256):  # touch every page, as decoding would
                cache[start : start + 256] = self._image
            self._cache = cache
        return self._cache

    def head(self, n: int) -> SyntheticFaces:
        """The first n images (2:1 kept), with a copy of their cached images when this split is
        cached (the split itself, and so its whole cache, stays alive in ``full_size_rss``)."""
        n_real = round(n * len(self.real_image_names) / len(self))
        sub = SyntheticFaces(n_real, n - n_real, self.transform.train, self.root_path)
        if self._cache is not None:
            sub._cache = torch.cat(
                [
                    self._cache[:n_real],
                    self._cache[len(self.real_image_names) : len(self.real_image_names) + n - n_real],
                ]
            )
        return sub

    def __getitem__(self, index):
        return self.transform(self.load_uint8(index)), int(index >= len(self.real_image_names))


def full_size_rss(name: str, args, device: torch.device) -> dict:
    """Peak RSS of training with the image cache on full-size splits (synthetic images): the 'auto'
    cache decision on the real split sizes, then ``--rss_batches`` training batches and one eval
    batch per split with the trainer's defaults (uncached splits through DataLoader workers).

    ``total_peak_rss_mb`` is this process's peak RSS plus the peak of its child processes' private
    memory (the DataLoader workers; with ``--compile`` also torch.compile's compile workers). A
    forked worker's RSS also counts every page it shares with this process, so only its private
    memory is added; it has no kernel-kept peak, so it is sampled after every training batch and
    after each eval, and the largest sample is kept (``worker_private_peak_mb``).
    """
    gc.collect()
    reset_peak_rss()
    rss_start = current_rss_mb()
    import make_demo_datasets

    sizes = make_demo_datasets.plan_counts(full_size=True, datasets=[args.dataset])[args.dataset]
    splits = {
        s: SyntheticFaces(sizes[s]["real"], sizes[s]["fake"], train=s == "train", name=s)
        for s in ("train", "val", "test")
    }
    rss_before_cache = current_rss_mb()  # what the 'auto' rule weighs the cache against
    start = time.perf_counter()
    cached = apply_image_cache(list(splits.values()), "auto", progress=False)
    cache_seconds = time.perf_counter() - start
    after_cache = peak_rss_mb()
    bs = args.rss_batch_size or args.batch_size
    train = splits["train"].head(min(len(splits["train"]), bs * args.rss_batches))
    val = splits["val"].head(min(len(splits["val"]), args.eval_batch_size or bs))
    test = splits["test"].head(min(len(splits["test"]), args.eval_batch_size or bs))
    trainer = make_trainer(
        name, args, {"train": train, "val": val, "test": test}, device, "-", "-", batch_size=bs
    )
    rss_model = current_rss_mb()
    worker_samples = [0.0]

    def sample_workers(*_) -> None:
        worker_samples.append(sum(private_mb(pid) for pid in child_pids()))

    hook = trainer.optimizer.register_step_post_hook(sample_workers)  # after every training batch
    trainer.train_one_epoch()
    hook.remove()
    peak_train = peak_rss_mb()
    for split in (val, test):
        trainer.evaluate(split)
        sample_workers()
    main_peak = peak_rss_mb()
    worker_peak = max(worker_samples)
    return {
        "rss_at_start_mb": rss_start,
        "rss_with_model_mb": rss_model,
        "peak_rss_train_mb": peak_train,
        "model": name,
        "dataset": args.dataset,
        "activation_checkpointing": bool(getattr(trainer.model, "activation_checkpointing", False)),
        "split_sizes": {s: len(d) for s, d in splits.items()},
        "rss_before_cache_mb": rss_before_cache,
        "cached_splits": cached,
        "cache_gb": sum(len(d) for d, c in zip(splits.values(), cached) if c) * 3 * 256 * 256 / 1024**3,
        "cache_seconds": cache_seconds,
        "batch_size": bs,
        "train_batches": math.ceil(len(train) / bs),
        "num_workers": trainer.num_workers,
        "worker_samples": len(worker_samples) - 1,
        "rss_after_cache_mb": after_cache,
        "main_peak_rss_mb": main_peak,
        "worker_private_peak_mb": worker_peak,
        "total_peak_rss_mb": main_peak + worker_peak,
    }


def run_full_size_rss(name: str, argv: list[str]) -> dict:
    """``full_size_rss`` in a fresh subprocess (a clean peak RSS), with this run's own arguments
    (``argv``; argparse keeps the last value of a flag given twice)."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--rss_only", name, "--no_progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise UserError(
            f"full-size RSS check of {name} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- output
def print_table(results: dict) -> None:
    def fmt(v, digits=1):  # one decimal unless asked
        return metrics.fmt(v, digits)

    print(f"{'model':14s} {'loop':10s} {'train img/s':>12s} {'eval img/s':>11s}")
    for name, r in results.items():
        for label, key in (("(a) model", "model_only"), ("(b) e2e", "end_to_end"), ("(c) naive", "naive")):
            print(
                f"{name:14s} {label:10s} {fmt(r[f'{key}_train_ips']):>12s} {fmt(r[f'{key}_eval_ips']):>11s}"
            )
    print()
    print(
        f"{'model':14s} {'b/a train':>9s} {'b/a eval':>9s} {'b/c train':>9s} {'b/c eval':>9s} "
        f"{'b/c epoch':>9s} {'peak RSS MB':>11s} {'full-size RSS MB':>16s}"
    )
    for name, r in results.items():
        full = r.get("full_size_peak_rss_mb")
        print(
            f"{name:14s} {fmt(r['train_efficiency'], 3):>9s} {fmt(r['eval_efficiency'], 3):>9s} "
            f"{fmt(r['train_speedup'], 3):>9s} {fmt(r['eval_speedup'], 3):>9s} "
            f"{fmt(r['epoch_speedup'], 3):>9s} {fmt(r['peak_rss_mb'], 0):>11s} {fmt(full, 0):>16s}"
        )
        if "levers" in r:
            print(f"  levers ({name}): " + json.dumps(r["levers"], indent=None, default=float))


def write_results(path: str, results: dict) -> None:
    """Merge into ``path`` (a dict keyed by model name), atomically. A file that is not such a
    JSON object is moved aside (``fileio.move_aside``: kept, never deleted) and a new one started."""
    existing = read_json_object(path, "results JSON, a new one is written")
    existing.update(results)
    atomic_write_json(path, existing)


# ----------------------------------------------------------------------------- CLI
def add_shared_flags(
    parser: ArgumentParser, out_name: str, split_help: str, scale_help: str, smoke_help: str
) -> None:
    """The flags bench_train.py and bench_analysis.py share: models, data, device, seed, smoke
    mode and output."""
    parser.add_argument(
        "--models",
        nargs="+",
        default=["SimpleNet", "XceptionBased"],  # the course's two, whose targets benchmarks/README.md tracks
        choices=MODEL_NAMES,
        help="models to measure (random weights: nothing is built with pretrained weights)",
    )
    parser.add_argument(
        "--dataset", default="fakes_dataset", choices=DATASET_NAMES, help=f"dataset {split_help}"
    )
    parser.add_argument(
        "--data_root",
        default=None,
        help="existing data (holding <dataset>/); default: generate demo data in a temp folder",
    )
    parser.add_argument(
        "--scale",
        default=1.0,
        type=positive_float,
        help=f"scale of the generated demo data (1.0: {scale_help})",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny and fast (seconds; for the tests): {smoke_help}; the figures mean nothing",
    )
    parser.add_argument("--seed", default=0, type=non_negative_int, help="seed for the data and the models")
    parser.add_argument(
        "--out", default=os.path.join("out", out_name), help="JSON written (merged: one object per model)"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)


def build_parser() -> ArgumentParser:
    """The command line of bench_train.py; returns the parser."""
    parser = ArgumentParser(
        description="Training/eval throughput: model only (a), end to end (b) and the "
        "naive course loop (c); writes out/bench_train.json."
    )
    add_shared_flags(
        parser,
        out_name="bench_train.json",
        split_help="whose splits are used",
        scale_help="fakes_dataset 600/150/150 images",
        smoke_help="demo scale 0.02, batch 4, SimpleNet 4 images per pass, XceptionBased 1 "
        "train and 2 eval images, 1 round, no warm-up, no RSS subprocess",
    )
    parser.add_argument(
        "--batch_size",
        "-b",
        default=32,
        type=positive_int,
        help="training batch size of all three loops (32: the study's protocol)",
    )
    parser.add_argument(
        "--eval_batch_size",
        default=None,
        type=positive_int,
        help="eval batch size of (a) and (b) (default: the trainer's: --batch_size, at "
        "most 16 on the CPU); (c) evaluates with --batch_size",
    )
    parser.add_argument("--lr", default=0.001, type=positive_float, help="Adam learning rate")
    parser.add_argument(
        "--repeats",
        default=3,
        type=positive_int,
        help="rounds of the three loops; figures are the best round",
    )
    parser.add_argument(
        "--simplenet_train_images",
        default=0,
        type=non_negative_int,
        help="SimpleNet training images per pass (0: the whole train split)",
    )
    parser.add_argument(
        "--simplenet_eval_images",
        default=0,
        type=non_negative_int,
        help="SimpleNet eval images per pass, half val half test (0: whole val and test)",
    )
    parser.add_argument(
        "--xception_train_images",
        default=32,
        type=non_negative_int,
        help="XceptionBased training images per pass (0: the whole train split)",
    )
    parser.add_argument(
        "--xception_eval_images",
        default=32,
        type=non_negative_int,
        help="XceptionBased eval images per pass, half val half test (0: all)",
    )
    add_loop_flags(parser)
    add_rss_flags(parser)
    return parser


def add_loop_flags(parser: ArgumentParser) -> None:
    """The flags that set up loops (a), (b) and (c) and the lever measurements."""
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for (a) and (b) (CUDA only)")
    parser.add_argument(
        "--channels_last",
        default="auto",
        choices=("auto", "on", "off"),
        help="memory layout of (a) and (b) (the trainer's default: auto)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model of (a) and (b)")
    parser.add_argument(
        "--activation_checkpointing",
        action="store_true",
        help="XceptionBased of (a), (b) and the RSS check with activation checkpointing "
        "(train_main.py --activation_checkpointing)",
    )
    parser.add_argument(
        "--num_workers",
        default=None,
        type=non_negative_int,
        help="DataLoader workers of (b) (default: the trainer's default)",
    )
    parser.add_argument(
        "--cache_images",
        default="auto",
        choices=("auto", "on", "off"),
        help="image cache of (b), as train_main.py --cache_images",
    )
    parser.add_argument(
        "--skip_naive", action="store_true", help="do not run (c) (its figures and b/c become null)"
    )
    parser.add_argument(
        "--levers",
        action="store_true",
        help="also measure model-only images/s with and without each lever "
        "(channels_last, eval batch x2/x4, inference_mode vs no_grad, 1 thread) "
        "and the per-image data costs",
    )
    parser.add_argument(
        "--levers_compile",
        action="store_true",
        help="with --levers: also measure torch.compile (minutes of compiling)",
    )


def add_rss_flags(parser: ArgumentParser) -> None:
    """The flags of the full-size cache RSS check."""
    parser.add_argument(
        "--no_full_size_rss",
        action="store_true",
        help="skip the full-size cache RSS check (a subprocess per model)",
    )
    parser.add_argument(
        "--rss_only",
        default=None,
        choices=MODEL_NAMES,
        help="only run the full-size cache RSS check for this model and print its JSON "
        "(what the main run starts as a subprocess)",
    )
    parser.add_argument(
        "--rss_batch_size",
        default=None,
        type=positive_int,
        help="batch size of the full-size RSS check (default: --batch_size)",
    )
    parser.add_argument(
        "--rss_batches", default=1, type=positive_int, help="training batches of the full-size RSS check"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)  # also the full-size RSS subprocess's
    args = build_parser().parse_args(argv)
    device = get_device(args.device)
    if args.rss_only:
        print(json.dumps(full_size_rss(args.rss_only, args, device)))
        return 0
    if args.smoke:
        args.scale = min(args.scale, 0.02)
        args.batch_size = min(args.batch_size, 4)
        args.repeats = 1
        args.simplenet_train_images = args.simplenet_eval_images = 4
        args.xception_train_images, args.xception_eval_images = 1, 2
        args.no_full_size_rss = True
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as workdir:
        root = prepare_data(args, workdir)
        for name in args.models:
            print(f"measuring {name} ...", file=sys.stderr)
            results[name] = bench_model(name, args, root, device, workdir)
            if not args.no_full_size_rss:
                rss = run_full_size_rss(name, argv)
                results[name]["full_size_peak_rss_mb"] = rss["total_peak_rss_mb"]
                results[name]["full_size_rss"] = rss
            write_results(args.out, {name: results[name]})
    print_table(results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
