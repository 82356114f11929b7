"""Training and evaluation engine (docs/design.md#trainer).

The course contract is kept exactly: ``Trainer(model, optimizer, criterion, batch_size, train_dataset,
validation_dataset, test_dataset)``, ``train_one_epoch() -> (avg_loss, accuracy %)``,
``evaluate_model_on_dataloader(dataset) -> (avg_loss, accuracy %)``, ``validate()``, ``test()`` and
``run(epochs, logging_parameters)`` writing ``out/<dataset>_<model>_<optimizer>.json`` (a list of
runs) and ``checkpoints/<dataset>_<model>_<optimizer>.pt`` (best validation accuracy).

Beyond it: progress bars, the JSON written atomically after every epoch, extra per-epoch metrics,
a full-state ``*_last.pt`` checkpoint for ``--resume``, a batched uint8 data path (optional RAM cache,
augmentation on uint8, normalisation on the device), AMP/channels-last on CUDA and torch.distributed.
"""

from __future__ import annotations

import copy
import math
import os
import random
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from tqdm import tqdm

from lib import names
from lib.batching import AugmentedBatchSampler, CachedBatches, EvalShard, UInt8Batches, seeded_generator
from lib.cli import UserError, first_line
from lib.fileio import (
    LockHeldError,
    atomic_torch_save,
    atomic_write_json,
    check_creatable_dir,
    ensure_dir,
    exclusive_lock,
    file_lock,
    read_runs,
    remove_unfinished_writes,
)
from lib.metrics import binary_metrics
from lib.precise_bn import batchnorm_layers, recompute_bn_statistics
from lib.transforms import normalize_batch
from utils import (
    StudyTransform,
    load_checkpoint,
    non_finite_tensor,
    resolve_channels_last,
    state_dict_mismatch,
)

COURSE_KEYS = (
    "model",
    "dataset",
    "optimizer",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
)
EXTRA_SPLIT_KEYS = ("auc", "eer", "ap", "balanced_acc", "per_class_acc")
TIMING_KEYS = ("epoch_seconds", "train_images_per_sec", "eval_images_per_sec")
CPU_EVAL_BATCH = 16  # default eval batch cap on the CPU (benchmarks/README.md)


@dataclass
class LoggingParameters:
    """What a run is: names for the output files and the optimizer settings for the JSON."""

    model_name: str
    dataset_name: str
    optimizer_name: str
    optimizer_params: dict = field(default_factory=dict)


def output_stem(logging_parameters: LoggingParameters) -> str:
    """``<dataset>_<model>_<optimizer>``: the stem of the run's JSON and checkpoint names."""
    lp = logging_parameters
    return names.output_stem(lp.dataset_name, lp.model_name, lp.optimizer_name)


class TrainingDiverged(UserError):
    """The training loss became NaN or inf; the message names the epoch and the batch."""

    def __init__(self, epoch: int, batch: int):
        super().__init__(f"training diverged (loss is NaN/inf) at epoch {epoch}, batch {batch}; lower --lr")


def run_paths(out_dir: str, checkpoint_dir: str, logging_parameters: LoggingParameters) -> dict:
    """The files of a run: its runs JSON, best checkpoint, full-state ``_last`` checkpoint and the
    lock that keeps a second live run off them."""
    stem = output_stem(logging_parameters)
    return {
        "json": os.path.join(out_dir, f"{stem}.json"),
        "best": os.path.join(checkpoint_dir, f"{stem}.pt"),
        "last": os.path.join(checkpoint_dir, f"{stem}_last.pt"),
        "lock": os.path.join(checkpoint_dir, f".{stem}.lock"),
    }


def check_output_paths(paths: dict, create: bool = True) -> None:
    """Create the output folders (or, with ``create`` False, only check that they could be made)
    and refuse a folder standing where a file of the run goes, so that a bad output path stops
    the run before its first epoch, not after it."""
    for key, flag in (("json", "--out_dir"), ("best", "--checkpoint_dir"), ("last", "--checkpoint_dir")):
        (ensure_dir if create else check_creatable_dir)(os.path.dirname(paths[key]))
        if os.path.isdir(paths[key]):
            raise UserError(
                f"{paths[key]}: is a folder, but this run writes a file there; move it "
                f"away or choose another {flag}"
            )


def json_safe_optimizer_params(param_group: dict) -> dict:
    """An optimizer param group without ``params``, reduced to JSON values (tuples become lists)."""
    out = {}
    for key, value in param_group.items():
        if key == "params":
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, tuple):
            value = list(value)
        if value is None or isinstance(value, (bool, int, float, str, list)):
            out[key] = value
    return out


@dataclass
class EvalResult:
    """Everything one pass over a split gives: course numbers plus scores for the extra metrics."""

    loss: float
    accuracy: float
    labels: np.ndarray
    logits: np.ndarray
    seconds: float

    @property
    def images_per_sec(self) -> float:
        return len(self.labels) / max(self.seconds, 1e-9)

    @property
    def fake_scores(self) -> np.ndarray:
        """Softmax probability of class 1 (fake)."""
        return torch.softmax(torch.from_numpy(self.logits).double(), dim=1)[:, 1].numpy()

    def metrics(self) -> dict:
        """``metrics.binary_metrics`` of P(fake); all None when the pass kept no scores."""
        if len(self.labels) == 0:
            return dict.fromkeys(EXTRA_SPLIT_KEYS)
        return binary_metrics(self.labels, self.fake_scores)


class Trainer:
    """Trains a model, evaluates it each epoch, logs to JSON and keeps checkpoints.

    Args beyond the course ones (all optional): ``device``, ``num_workers`` (DataLoader workers;
    ``None`` picks 0 when the data is cached in RAM, else up to 4), ``eval_batch_size`` (default:
    ``batch_size``, at most 16 on the CPU), ``seed``
    (data order and augmentation), ``amp`` (bf16 autocast on CUDA), ``channels_last`` ('auto': on
    for CPU and CUDA, see ``resolve_channels_last``), ``compile`` (``torch.compile`` the model for
    the steps; off by default: on 2 CPU cores its compile time did not pay off), ``progress``
    (tqdm bars), ``out_dir``/``checkpoint_dir``, ``run_info`` (extra keys for the JSON run, such
    as the command-line arguments) and ``precise_bn`` (before each evaluation, recompute the
    BatchNorm statistics over that many training batches; 0, the course's behaviour, keeps the
    running averages of training; see ``recompute_bn_statistics``).

    A split whose images are cached (``FacesDataset.cache_images``) is batched straight from the
    cache, without a DataLoader, when the device is CUDA (the cache moves to the GPU once; crop,
    flip and normalisation run there) or when ``num_workers`` is 0 or left at its default.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        batch_size: int,
        train_dataset,
        validation_dataset,
        test_dataset,
        *,
        device: torch.device | str | None = None,
        num_workers: int | None = None,
        eval_batch_size: int | None = None,
        seed: int = 0,
        amp: bool = False,
        channels_last: bool | str = "auto",
        progress: bool = True,
        out_dir: str = "out",
        checkpoint_dir: str = "checkpoints",
        run_info: dict | None = None,
        compile: bool = False,
        precise_bn: int = 0,
    ):
        if batch_size < 1:
            raise UserError(f"--batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        if batch_size % self.world_size:
            raise UserError(
                f"--batch_size {batch_size} must be divisible by the number of processes ({self.world_size})"
            )
        self.channels_last = resolve_channels_last(channels_last, self.device)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 256x256 input: pick the fastest kernels
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.ddp_model = self.model
        if self.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.train_forward = torch.compile(self.ddp_model) if compile else self.ddp_model
        self.eval_forward = torch.compile(self.model) if compile else self.model
        self.optimizer = optimizer
        self.criterion = criterion
        self.batch_size = batch_size
        # Eval default: the training batch size, but at most 16 on the CPU, where smaller batches
        # keep the activations in cache (SimpleNet eval 1.3x faster at 16 than at 32; the metrics
        # are the same up to float rounding).
        self.eval_batch_size = eval_batch_size or (
            min(batch_size, CPU_EVAL_BATCH) if self.device.type == "cpu" else batch_size
        )
        self.train_dataset = train_dataset
        self.validation_dataset = validation_dataset
        self.test_dataset = test_dataset
        self.seed = seed
        self.amp = amp and self.device.type == "cuda"
        self.progress = progress and self.is_main
        self.out_dir, self.checkpoint_dir = out_dir, checkpoint_dir
        self.run_info = dict(run_info or {})
        cached = all(getattr(d, "cached", False) for d in (train_dataset, validation_dataset, test_dataset))
        self.num_workers = (
            (0 if cached else min(4, max(1, (os.cpu_count() or 2) - 1)))
            if num_workers is None
            else num_workers
        )
        self._workers_asked = num_workers is not None
        self.precise_bn = precise_bn
        self.epoch = 0  # epochs finished; train_one_epoch trains epoch self.epoch + 1
        self._last_batch = 0  # batches in the last epoch trained
        self._loaders: dict = {}
        self._device_caches: dict = {}
        self.last_eval: EvalResult | None = None  # the latest evaluate_model_on_dataloader pass

    # ------------------------------------------------------------------ data
    @staticmethod
    def _batched_path(dataset) -> bool:
        """FacesDataset with the study transform: use the batched uint8 path."""
        return hasattr(dataset, "load_uint8") and isinstance(
            getattr(dataset, "transform", None), StudyTransform
        )

    def _loader(self, dataset, train: bool) -> DataLoader:
        """The (kept) training or evaluation loader of ``dataset`` for this process."""
        key = (id(dataset), train)
        if key in self._loaders:
            return self._loaders[key]
        batch_size = self.batch_size if train else self.eval_batch_size
        per_rank = batch_size // self.world_size if train else batch_size
        sampler = DistributedSampler(
            dataset,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=train,
            seed=self.seed,
            drop_last=False,
        )
        if not train and self.distributed:
            sampler = EvalShard(len(dataset), self.rank, self.world_size)
        if self._batched_path(dataset) and train and dataset.transform.train:
            batches = AugmentedBatchSampler(sampler, per_rank, len(dataset), self.seed)
        else:
            batches = BatchSampler(sampler, per_rank, drop_last=False)
        loader = self._batch_loader(dataset, batches, persistent=True)
        loader.epoch_sampler = sampler
        self._loaders[key] = loader
        return loader

    def _batch_loader(self, dataset, batches, persistent: bool):
        """Batches of ``dataset`` given as lists of indices (or augmentation rows): from the
        uint8 cache, through the batched uint8 loader, or through a plain DataLoader."""
        workers = dict(
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and self.num_workers > 0,
        )
        if not self._batched_path(dataset):
            return DataLoader(dataset, batch_sampler=batches, **workers)
        direct = getattr(dataset, "cached", False) and (
            self.device.type == "cuda" or self.num_workers == 0 or not self._workers_asked
        )
        if direct:
            return CachedBatches(*self._device_cache(dataset), batches, self.device)
        return DataLoader(UInt8Batches(dataset), sampler=batches, batch_size=None, **workers)

    def _device_cache(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """A cached split's uint8 images and labels on the training device, copied there once."""
        key = id(dataset)
        if key not in self._device_caches:
            self._device_caches[key] = (
                dataset.cache_images(progress=False).to(self.device),
                dataset.labels.to(self.device),
            )
        return self._device_caches[key]

    def _to_device(self, images: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = normalize_batch(images, self.memory_format)
        images = images.contiguous(memory_format=self.memory_format)
        labels = torch.as_tensor(labels).to(self.device, non_blocking=True)
        return images, labels

    def _bar(self, loader, desc: str):
        return tqdm(
            loader,
            desc=desc,
            unit="batch",
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _all_reduce(self, *tensors: torch.Tensor) -> None:
        if self.distributed:
            for tensor in tensors:
                dist.all_reduce(tensor)

    # ------------------------------------------------------------------ course API
    def train_one_epoch(self) -> tuple[float, float]:
        """One pass over shuffled training data. Returns (mean loss per sample, accuracy %)."""
        self.ddp_model.train()
        loader = self._loader(self.train_dataset, train=True)
        loader.epoch_sampler.set_epoch(self.epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = batch_number = 0
        bad_batch = torch.zeros((), dtype=torch.long, device=self.device)  # first NaN/inf loss; 0: none
        # Reading the flag waits for the queued GPU steps (and is a collective under torchrun), so
        # there it is read every 50 batches and at the end; on one CPU process, every batch.
        check_every = 1 if self.device.type == "cpu" and not self.distributed else 50
        start = last_update = time.monotonic()
        bar = self._bar(loader, f"train epoch {self.epoch + 1}")
        for batch_number, (images, labels) in enumerate(bar, 1):
            images, labels = self._to_device(images, labels)
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                outputs = self.train_forward(images)
                loss = self.criterion(outputs, labels)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach().double() * labels.shape[0]
            correct += (outputs.detach().argmax(1) == labels).sum()
            seen += labels.shape[0]
            bad_batch = torch.where(
                (bad_batch == 0) & ~torch.isfinite(loss.detach()), batch_number, bad_batch
            )
            if batch_number % check_every == 0 and (first_bad := self._first_bad_batch(bad_batch)):
                raise TrainingDiverged(self.epoch + 1, first_bad)
            if self.progress and time.monotonic() - last_update > 0.5:  # syncs only for display
                last_update = time.monotonic()
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.4f}",
                    acc=f"{100.0 * correct.item() / seen:.2f}",
                    ips=f"{seen * self.world_size / (last_update - start):.1f}",
                )
        bar.close()
        if first_bad := self._first_bad_batch(bad_batch):
            raise TrainingDiverged(self.epoch + 1, first_bad)
        if non_finite_tensor(self.model.state_dict()):
            raise TrainingDiverged(self.epoch + 1, batch_number)  # the last step made weights NaN/inf
        self._last_batch = batch_number
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the steps were queued: time them finished
        self.last_train_seconds = time.monotonic() - start
        totals = torch.tensor([seen], dtype=torch.float64, device=self.device)
        self._all_reduce(loss_sum, correct, totals)
        total = int(totals.item())
        self.last_train_images_per_sec = total / max(self.last_train_seconds, 1e-9)
        self.epoch += 1
        return loss_sum.item() / total, 100.0 * correct.item() / total

    def _first_bad_batch(self, bad_batch: torch.Tensor) -> int:
        """The first batch with a NaN/inf loss on any process (0: none). Under torchrun every
        process takes part, so all of them stop at the same check instead of one waiting forever
        in the next gradient all-reduce."""
        if not self.distributed:
            return int(bad_batch.item())
        never = torch.iinfo(torch.long).max
        first = torch.where(bad_batch == 0, never, bad_batch).reshape(1)
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
        found = int(first.item())
        return 0 if found == never else found

    @torch.inference_mode()
    def evaluate(self, dataset, desc: str = "eval") -> EvalResult:
        """One ordered pass without gradients, keeping the logits for the extra metrics."""
        self.ddp_model.eval()
        if self.distributed:  # BatchNorm statistics drift apart per rank: all use (and save) rank 0's
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)
        loader = self._loader(dataset, train=False)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        logits, labels_all = [], []
        start = time.monotonic()
        for images, labels in self._bar(loader, desc):
            images, labels = self._to_device(images, labels)
            with self._autocast():
                outputs = self.eval_forward(images)
            outputs = outputs.float()
            loss_sum += self.criterion(outputs, labels).double() * labels.shape[0]
            logits.append(outputs)
            labels_all.append(labels)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.monotonic() - start
        logits_t = torch.cat(logits) if logits else torch.empty((0, 2), device=self.device)
        labels_t = (
            torch.cat(labels_all) if labels_all else torch.empty(0, dtype=torch.long, device=self.device)
        )
        if self.distributed:
            logits_t, labels_t = self._gather_eval(logits_t, labels_t)
            self._all_reduce(loss_sum)
        n = labels_t.shape[0]
        if n == 0:
            raise UserError(f"{getattr(dataset, 'root_path', 'dataset')}: no samples to evaluate")
        accuracy = 100.0 * (logits_t.argmax(1) == labels_t).sum().item() / n
        return EvalResult(
            loss=loss_sum.item() / n,
            accuracy=accuracy,
            labels=labels_t.cpu().numpy(),
            logits=logits_t.cpu().numpy(),
            seconds=seconds,
        )

    def _gather_eval(self, logits: torch.Tensor, labels: torch.Tensor):
        """All ranks' eval shards, in dataset order (rank r holds indices r, r+W, ...)."""
        counts = [torch.zeros((), dtype=torch.long, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(counts, torch.tensor(labels.shape[0], device=self.device))
        sizes = torch.stack(counts).tolist()  # one host read for all ranks
        longest, n = max(sizes), sum(sizes)
        pad = longest - labels.shape[0]
        logits = torch.cat([logits, logits.new_zeros((pad, 2))])
        labels = torch.cat([labels, labels.new_zeros(pad)])
        all_logits = [torch.empty_like(logits) for _ in range(self.world_size)]
        all_labels = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(all_logits, logits)
        dist.all_gather(all_labels, labels)
        # Position-major order is dataset order; only the last ranks can be one short, so the
        # padding lands at the very end and is cut off.
        return torch.stack(all_logits, 1).reshape(-1, 2)[:n], torch.stack(all_labels, 1).reshape(-1)[:n]

    def recompute_bn_statistics(self) -> None:
        """PreciseBN before an evaluation: the BatchNorm running statistics become the exact
        statistics over ``precise_bn`` training batches, taken without augmentation (the
        evaluation transform), in an order drawn from (seed, epoch) so that it repeats on resume,
        and summed over all torchrun processes. Nothing happens for a model without BatchNorm."""
        if not self.precise_bn or not batchnorm_layers(self.model):
            return
        dataset = self._eval_view(self.train_dataset)
        generator = seeded_generator(self.seed, self.epoch)
        order = torch.randperm(len(dataset), generator=generator)[: self.precise_bn * self.batch_size]
        mine = order[self.rank :: self.world_size].tolist()  # each process forwards its share
        per_rank = self.batch_size // self.world_size
        batches = [mine[i : i + per_rank] for i in range(0, len(mine), per_rank)]
        loader = self._batch_loader(dataset, batches, persistent=False)
        inputs = (
            self._to_device(images, labels)[0]
            for images, labels in self._bar(loader, f"precise BN epoch {self.epoch}")
        )
        with self._autocast():
            recompute_bn_statistics(self.model, inputs, self._all_reduce if self.distributed else None)

    def _eval_view(self, dataset):
        """``dataset`` as the evaluation transform sees it: the batched uint8 path has no
        augmentation when batches are plain indices; another dataset gets the validation
        set's transform (a shallow copy: the images and any cache are shared)."""
        if self._batched_path(dataset) or not hasattr(dataset, "transform"):
            return dataset
        view = copy.copy(dataset)
        view.transform = getattr(self.validation_dataset, "transform", None)
        return view

    def evaluate_model_on_dataloader(self, dataset) -> tuple[float, float]:
        """(mean loss per sample, accuracy %) on ``dataset``, no gradients, no shuffling. The
        whole result (logits, labels, time) stays in ``self.last_eval`` for the extra metrics."""
        split = (
            "val"
            if dataset is self.validation_dataset
            else "test"
            if dataset is self.test_dataset
            else "eval"
        )
        self.last_eval = self.evaluate(dataset, f"{split} epoch {self.epoch}")
        return self.last_eval.loss, self.last_eval.accuracy

    def validate(self) -> tuple[float, float]:
        """(mean loss, accuracy %) on the validation set."""
        return self.evaluate_model_on_dataloader(self.validation_dataset)

    def test(self) -> tuple[float, float]:
        """(mean loss, accuracy %) on the test set."""
        return self.evaluate_model_on_dataloader(self.test_dataset)

    def _through(self, split_method) -> EvalResult:
        """Call ``validate`` or ``test`` (so a subclass that overrides them is honoured) and return
        the full result of that pass; when the override did not evaluate through
        ``evaluate_model_on_dataloader``, only its (loss, accuracy) are kept, without extra metrics."""
        self.last_eval = None
        loss, accuracy = split_method()
        result = self.last_eval
        if result is None or (result.loss, result.accuracy) != (loss, accuracy):
            result = EvalResult(
                loss=loss,
                accuracy=accuracy,
                labels=np.zeros(0, np.int64),
                logits=np.zeros((0, 2), np.float32),
                seconds=0.0,
            )
        return result

    # ------------------------------------------------------------------ run
    def paths(self, logging_parameters: LoggingParameters) -> dict:
        return run_paths(self.out_dir, self.checkpoint_dir, logging_parameters)

    def _new_run(self, logging_parameters: LoggingParameters) -> dict:
        lp = logging_parameters
        run = {
            "model": lp.model_name,
            "dataset": lp.dataset_name,
            "optimizer": {"name": lp.optimizer_name, "params": dict(lp.optimizer_params)},
        }
        for key in COURSE_KEYS[3:]:
            run[key] = []
        for split in ("val", "test"):
            for key in EXTRA_SPLIT_KEYS:
                run[f"{split}_{key}"] = []
        for key in TIMING_KEYS:
            run[key] = []
        run.update(
            {
                "best_epoch": None,
                "best_val_acc": None,
                "test_acc_at_best": None,
                "seed": self.seed,
                "device": str(self.device),
                "world_size": self.world_size,
                "run_id": uuid.uuid4().hex,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "completed": False,
            }
        )
        run.update(self.run_info)
        return run

    def _write_json(self, path: str, run: dict) -> None:
        """Replace this run's entry (by run_id) or append it; earlier runs are kept. Locked, so that
        runs writing the same JSON at once never lose each other's writes."""
        with file_lock(path):
            runs = read_runs(path, repair=True)
            for i, old in enumerate(runs):
                if old.get("run_id") == run["run_id"]:
                    runs[i] = run
                    break
            else:
                runs.append(run)
            atomic_write_json(path, runs)

    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def _save_last(self, path: str, run: dict, best_val: float) -> None:
        atomic_torch_save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch,
                "best_val_acc": best_val,
                "run": run,
                "rng": _rng_to_safe(self._rng_state()),
                "model_name": run["model"],
            },
            path,
        )

    def resume_from(self, path: str, model_name: str | None = None) -> tuple[dict, float]:
        """Restore model, optimizer, epoch and RNG from a ``*_last.pt``; return (run, best val).

        Every rank calls it (under torchrun each loads the same file). A checkpoint of another
        model (``model_name`` given), a truncated file or one whose pickle holds code is refused
        with a one-line ``UserError``; nothing in it is executed (``weights_only=True``).
        """
        checkpoint = load_checkpoint(path, self.device)
        if "optimizer" not in checkpoint or "run" not in checkpoint:
            raise UserError(f"{path}: not a full-state checkpoint written by --resume-capable training")
        found = checkpoint.get("model_name")
        if model_name and found and found != model_name:
            raise UserError(
                f"{path}: holds a {found} run, not {model_name}; move the file away or start without --resume"
            )
        mismatch = state_dict_mismatch(self.model, checkpoint["model"])
        if mismatch:
            raise UserError(f"{path}: does not fit this model ({mismatch}); start without --resume")
        self._refuse_other_protocol(path, checkpoint["run"])
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.epoch = int(checkpoint["epoch"])
            self._set_rng_state(_rng_from_safe(checkpoint["rng"]))
            best = checkpoint["best_val_acc"]
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            message = first_line(exc)
            raise UserError(
                f"{path}: does not fit this model/optimizer ({message}); start without --resume"
            ) from None
        return checkpoint["run"], (-math.inf if best is None else float(best))

    def _refuse_other_protocol(self, path: str, saved_run) -> None:
        """Refuse to resume a run whose protocol differs from this one's (``run_info['protocol']``,
        the flags that define a run: model, data, optimizer, lr, batch size, seed ...), naming
        each difference: a resumed run must be the run its JSON describes."""
        mine = self.run_info.get("protocol") or {}
        theirs = (saved_run.get("protocol") if isinstance(saved_run, dict) else None) or {}
        differences = [
            f"--{key} {mine[key]} differs from the run's {theirs[key]}"
            for key in mine
            if key in theirs and mine[key] != theirs[key]
        ]
        if differences:
            raise UserError(
                f"--resume {path}: {'; '.join(differences)}; resume with the run's flags "
                "(a larger -e is fine), or start a new run without --resume"
            )

    def run(self, epochs: int, logging_parameters: LoggingParameters, resume: bool = False) -> dict:
        """Train for ``epochs`` epochs (in total, counting resumed ones); returns the run dict.

        The main process holds ``<checkpoint_dir>/.<stem>.lock`` meanwhile, so a second live run
        on the same checkpoints is refused (``UserError``) instead of mixing its files with this
        one's. A loss that becomes NaN/inf raises ``TrainingDiverged`` after the JSON of the
        finished epochs is written, marked not completed.
        """
        if epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {epochs}")
        paths = self.paths(logging_parameters)
        if not self.is_main:
            return self._run_epochs(epochs, logging_parameters, paths, resume)
        check_output_paths(paths)
        note = (
            f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{' '.join(self.run_info.get('argv') or sys.argv)}"
        )
        try:
            with exclusive_lock(paths["lock"], note):
                return self._run_locked(epochs, logging_parameters, paths, resume)
        except LockHeldError as exc:
            raise UserError(
                f"{paths['best']} and {paths['last']} are in use by another training "
                f"({exc}); wait for it to finish, or give this run another --checkpoint_dir "
                "(it may share --out_dir)"
            ) from None

    def _run_locked(
        self, epochs: int, logging_parameters: LoggingParameters, paths: dict, resume: bool
    ) -> dict:
        """``run`` in the main process while it holds the lock: clear what a killed run's saves
        left, then train."""
        removed = remove_unfinished_writes(paths["best"]) + remove_unfinished_writes(paths["last"])
        if removed:
            print(
                f"removed unfinished checkpoint writes of a killed run: {', '.join(removed)}", file=sys.stderr
            )
        return self._run_epochs(epochs, logging_parameters, paths, resume)

    def _run_epochs(
        self, epochs: int, logging_parameters: LoggingParameters, paths: dict, resume: bool
    ) -> dict:
        """``run`` once its output files are checked and locked: the epoch loop. On divergence the
        main process writes the finished epochs to the JSON, marked not completed, and re-raises."""
        run, best_val = self._new_run(logging_parameters), -math.inf
        if resume:
            if not os.path.exists(paths["last"]):
                raise UserError(f"--resume: {paths['last']} does not exist; start without --resume")
            run, best_val = self.resume_from(paths["last"], logging_parameters.model_name)
            run["completed"] = self.epoch >= epochs
            if self.is_main:
                print(f"resuming {paths['last']} after epoch {self.epoch}", file=sys.stderr)
        other_runs_best_kept = False
        for _ in range(self.epoch, epochs):
            try:
                train_loss, train_acc = self.train_one_epoch()
                train_seconds = self.last_train_seconds
                self.recompute_bn_statistics()
                val, test = self._through(self.validate), self._through(self.test)
                if not (np.isfinite(val.logits).all() and np.isfinite(test.logits).all()):
                    raise TrainingDiverged(
                        self.epoch, self._last_batch
                    )  # finite weights, overflowing outputs
            except TrainingDiverged as exc:
                if self.is_main:  # the finished epochs, marked not completed
                    run.update(completed=False, diverged=str(exc))
                    self._write_json(paths["json"], run)
                raise
            self._log_epoch(run, train_loss, train_acc, val, test, train_seconds)
            if self.is_main:
                if val.accuracy > best_val:  # strictly better validation accuracy; never test
                    best_val = val.accuracy
                    run.update(
                        best_epoch=self.epoch, best_val_acc=val.accuracy, test_acc_at_best=test.accuracy
                    )
                    if not other_runs_best_kept:  # checked once, right before the first write
                        _keep_other_runs_best(paths["best"], run["run_id"])
                        other_runs_best_kept = True
                    atomic_torch_save(
                        {
                            "model": self.model.state_dict(),
                            "val_acc": val.accuracy,
                            "test_acc": test.accuracy,
                            "epoch": self.epoch,
                            "model_name": run["model"],
                            "dataset": run["dataset"],
                            "optimizer": run["optimizer"],
                            "run_id": run["run_id"],
                        },
                        paths["best"],
                    )
                run["completed"] = self.epoch >= epochs
                self._save_last(paths["last"], run, best_val)
                self._write_json(paths["json"], run)
                print(
                    f"epoch {self.epoch}/{epochs}: train loss {train_loss:.4f} acc {train_acc:.2f}% | "
                    f"val loss {val.loss:.4f} acc {val.accuracy:.2f}% | "
                    f"test loss {test.loss:.4f} acc {test.accuracy:.2f}%",
                    file=sys.stderr,
                )
        return run

    def _log_epoch(
        self, run: dict, train_loss, train_acc, val: EvalResult, test: EvalResult, train_seconds: float
    ) -> None:
        run["train_loss"].append(train_loss)
        run["train_acc"].append(train_acc)
        for split, result in (("val", val), ("test", test)):
            run[f"{split}_loss"].append(result.loss)
            run[f"{split}_acc"].append(result.accuracy)
            metrics = result.metrics()
            for key in EXTRA_SPLIT_KEYS:
                run[f"{split}_{key}"].append(metrics[key])
        eval_seconds = val.seconds + test.seconds
        run["epoch_seconds"].append(train_seconds + eval_seconds)
        run["train_images_per_sec"].append(self.last_train_images_per_sec)
        run["eval_images_per_sec"].append((len(val.labels) + len(test.labels)) / max(eval_seconds, 1e-9))


def _keep_other_runs_best(path: str, run_id: str) -> None:
    """Before this run first writes its best checkpoint: if ``path`` holds another run's (or an
    unreadable) checkpoint, rename it to ``<stem>.run-<its run_id[:8]>.pt`` so nothing is lost."""
    if not os.path.exists(path):
        return
    try:
        old = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        old_id = old.get("run_id") if isinstance(old, dict) else None
    except Exception:  # unreadable: keep it too, named after its time
        old_id = None
    if old_id == run_id:
        return
    tag = (
        str(old_id)[:8] if old_id else time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
    )
    stem, ext = os.path.splitext(path)
    aside, n = f"{stem}.run-{tag}{ext}", 1
    while os.path.exists(aside):
        aside, n = f"{stem}.run-{tag}-{n}{ext}", n + 1
    os.replace(path, aside)
    print(f"kept the earlier run's best checkpoint as {aside}", file=sys.stderr)


def _rng_to_safe(state: dict) -> dict:
    """RNG states as tensors and plain lists, so ``weights_only=True`` can load them."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    py_version, py_state, py_gauss = state["python"]
    safe = {
        "torch": state["torch"],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if "cuda" in state:
        safe["cuda"] = state["cuda"]
    return safe


def _rng_from_safe(safe: dict) -> dict:
    n = safe["numpy"]
    state = {
        "torch": safe["torch"].cpu(),
        "numpy": (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]),
        "python": (safe["python"]["version"], tuple(safe["python"]["state"]), safe["python"]["gauss"]),
    }
    if "cuda" in safe:
        state["cuda"] = [s.cpu() for s in safe["cuda"]]
    return state
