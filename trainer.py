"""Training and evaluation engine (docs/design.md#trainer).

The course's ``Trainer``: ``train_one_epoch``, ``evaluate_model_on_dataloader``, ``validate``, ``test``
and ``run``, which trains epoch after epoch and keeps the run's JSON and checkpoints. What the run
writes is in ``lib/run_files.py``, how batches reach the model in ``lib/batching.py``, the
torchrun collectives in ``lib/distributed.py``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lib import batching, distributed, names, run_files
from lib.checkpoints import non_finite_tensor
from lib.cli import UserError
from lib.device import resolve_channels_last
from lib.eval_result import EvalResult
from lib.optim import EpochLoss, TrainingOptions, selection_score
from lib.precise_bn import batchnorm_layers, precise_bn_batches, recompute_bn_statistics
from lib.run_files import (  # noqa: F401  (re-exported: train_main, tests and benchmarks import them here)
    COURSE_KEYS,
    EXTRA_SPLIT_KEYS,
    RunFiles,
    check_output_paths,
    json_safe_optimizer_params,
)

CPU_EVAL_BATCH = 16  # default eval batch cap on the CPU (benchmarks/README.md)
PROGRESS_BAR = dict(unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)


@dataclass
class LoggingParameters:
    """What a run is: names for the output files and the optimizer settings for the JSON."""

    model_name: str
    dataset_name: str
    optimizer_name: str
    optimizer_params: dict = field(default_factory=dict)
    run_name: str | None = None  # --run_name: a suffix to every file name of the run


def run_paths(out_dir: str, checkpoint_dir: str, logging_parameters: LoggingParameters) -> RunFiles:
    """The files of a run, named ``<dataset>_<model>_<optimizer>[_<run_name>]``: its runs JSON,
    best checkpoint, full-state ``_last`` checkpoint and lock."""
    lp = logging_parameters
    stem = names.output_stem(lp.dataset_name, lp.model_name, lp.optimizer_name, lp.run_name)
    return RunFiles.of(out_dir, checkpoint_dir, stem)


class TrainingDiverged(UserError):
    """The training loss became NaN or inf; the message names the epoch and the batch."""

    def __init__(self, epoch: int, batch: int):
        super().__init__(f"training diverged (loss is NaN/inf) at epoch {epoch}, batch {batch}; lower --lr")


class Trainer:
    """Trains a model, evaluates it each epoch, logs to JSON and keeps checkpoints.

    Options beyond the course's arguments: ``device``; ``num_workers`` (DataLoader workers; None: 0
    for data cached in RAM, else up to 4); ``eval_batch_size`` (default ``batch_size``, at most 16 on
    the CPU); ``seed`` (data order and augmentation); ``amp`` (bf16 autocast, CUDA only);
    ``channels_last`` (see ``resolve_channels_last``); ``compile`` (``torch.compile`` the model);
    ``progress`` (tqdm bars); ``out_dir``, ``checkpoint_dir``; ``run_info`` (extra keys of the JSON
    run); ``precise_bn`` (before each evaluation, recompute the BatchNorm statistics over that many
    training batches; 0, the course's behaviour, keeps the running averages of training);
    ``options`` (``TrainingOptions``: scheduler, clipping, checkpoint selection ...; the default is
    the course's training).
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
        options: TrainingOptions | None = None,
    ):
        if batch_size < 1:
            raise UserError(f"--batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.distributed = distributed.is_distributed()
        self.rank, self.world_size = distributed.rank_and_world_size()
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
        self.ddp_model = distributed.wrap_for_training(self.model, self.device)
        self.train_forward = torch.compile(self.ddp_model) if compile else self.ddp_model
        self.eval_forward = torch.compile(self.model) if compile else self.model
        self.optimizer, self.criterion, self.batch_size = optimizer, criterion, batch_size
        # On the CPU smaller eval batches keep the activations in cache (benchmarks/README.md).
        cpu = self.device.type == "cpu"
        self.eval_batch_size = eval_batch_size or (min(batch_size, CPU_EVAL_BATCH) if cpu else batch_size)
        splits = (train_dataset, validation_dataset, test_dataset)
        self.train_dataset, self.validation_dataset, self.test_dataset = splits
        self.seed, self.precise_bn = seed, precise_bn
        self.amp = amp and self.device.type == "cuda"
        self.progress = progress and self.is_main
        self.out_dir, self.checkpoint_dir = out_dir, checkpoint_dir
        self.run_info = dict(run_info or {})
        self.num_workers = batching.default_num_workers(splits) if num_workers is None else num_workers
        self._workers_asked = num_workers is not None
        self.options = options or TrainingOptions()
        self.epoch = 0  # epochs finished; train_one_epoch trains epoch self.epoch + 1
        self._last_batch = 0  # batches in the last epoch trained
        self._paths: dict = {}  # id(dataset) -> its BatchPath
        self._loaders: dict = {}  # (id(dataset), train) -> its kept DeviceBatches
        self.last_eval: EvalResult | None = None  # the latest evaluate_model_on_dataloader pass

    # ------------------------------------------------------------------ the course API
    def train_one_epoch(self) -> tuple[float, float]:
        """One pass over shuffled training data. Returns (the mean loss, as ``EpochLoss`` defines
        it, accuracy %)."""
        self.ddp_model.train()
        batches = self._batches(self.train_dataset, train=True)
        batches.set_epoch(self.epoch)
        epoch_loss = EpochLoss(self.criterion, self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        bad_batch = torch.zeros((), dtype=torch.long, device=self.device)  # first NaN/inf loss; 0: none
        seen = batch = 0
        # Reading the flag waits for queued GPU steps (a collective under torchrun): every 50 batches there.
        check_every = 1 if self.device.type == "cpu" and not self.distributed else 50
        start = last_update = time.monotonic()
        bar = self._bar(batches, f"train epoch {self.epoch + 1}")
        for batch, (images, labels) in enumerate(bar, 1):
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                outputs = self.train_forward(images)
                loss = self.criterion(outputs, labels)
            epoch_loss.add(loss, labels).backward()
            if self.options.clip_grad:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_grad)
            self.optimizer.step()
            correct += (outputs.detach().argmax(1) == labels).sum()
            seen += labels.shape[0]
            bad_batch = torch.where((bad_batch == 0) & ~torch.isfinite(loss.detach()), batch, bad_batch)
            if batch % check_every == 0 and (first_bad := distributed.first_bad_batch(bad_batch)):
                raise TrainingDiverged(self.epoch + 1, first_bad)
            if self.progress and time.monotonic() - last_update > 0.5:  # syncs only for display
                last_update = time.monotonic()
                ips = seen * self.world_size / (last_update - start)
                loss_now, acc_now = epoch_loss.mean(), 100.0 * correct.item() / seen
                bar.set_postfix(loss=f"{loss_now:.4f}", acc=f"{acc_now:.2f}", ips=f"{ips:.1f}")
        bar.close()
        if first_bad := distributed.first_bad_batch(bad_batch):
            raise TrainingDiverged(self.epoch + 1, first_bad)
        if non_finite_tensor(self.model.state_dict()):
            raise TrainingDiverged(self.epoch + 1, batch)  # the last step made weights NaN/inf
        self._last_batch = batch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the steps were queued: time them finished
        self.last_train_seconds = time.monotonic() - start
        totals = torch.tensor([seen], dtype=torch.float64, device=self.device)
        distributed.all_reduce(epoch_loss.sums, correct, totals)
        total = int(totals.item())
        self.last_train_images_per_sec = total / max(self.last_train_seconds, 1e-9)
        self.epoch += 1
        return epoch_loss.mean(), 100.0 * correct.item() / total

    @torch.inference_mode()
    def evaluate(self, dataset, desc: str = "eval") -> EvalResult:
        """One ordered pass without gradients, keeping the logits for the extra metrics."""
        self.ddp_model.eval()
        distributed.broadcast_buffers(self.model)  # BatchNorm statistics drift apart per rank: use rank 0's
        criterion = self.options.eval_criterion or self.criterion  # unsmoothed, unweighted when those train
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        logits = [torch.empty((0, 2), device=self.device)]
        labels = [torch.empty(0, dtype=torch.long, device=self.device)]
        start = time.monotonic()
        for images, batch_labels in self._bar(self._batches(dataset, train=False), desc):
            with self._autocast():
                outputs = self.eval_forward(images)
            outputs = outputs.float()
            loss_sum += criterion(outputs, batch_labels).double() * batch_labels.shape[0]
            logits.append(outputs)
            labels.append(batch_labels)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.monotonic() - start
        logits, labels = torch.cat(logits), torch.cat(labels)
        if self.distributed:
            logits, labels = distributed.gather_eval(logits, labels)
            distributed.all_reduce(loss_sum)
        n = labels.shape[0]
        if n == 0:
            raise UserError(f"{getattr(dataset, 'root_path', 'dataset')}: no samples to evaluate")
        accuracy = 100.0 * (logits.argmax(1) == labels).sum().item() / n
        return EvalResult(loss_sum.item() / n, accuracy, labels.cpu().numpy(), logits.cpu().numpy(), seconds)

    def evaluate_model_on_dataloader(self, dataset) -> tuple[float, float]:
        """(mean loss per sample, accuracy %) on ``dataset``, no gradients, no shuffling. The
        whole result (logits, labels, time) stays in ``self.last_eval`` for the extra metrics."""
        splits = {id(self.test_dataset): "test", id(self.validation_dataset): "val"}  # val wins a tie
        self.last_eval = self.evaluate(dataset, f"{splits.get(id(dataset), 'eval')} epoch {self.epoch}")
        return self.last_eval.loss, self.last_eval.accuracy

    def validate(self) -> tuple[float, float]:
        """(mean loss, accuracy %) on the validation set."""
        return self.evaluate_model_on_dataloader(self.validation_dataset)

    def test(self) -> tuple[float, float]:
        """(mean loss, accuracy %) on the test set."""
        return self.evaluate_model_on_dataloader(self.test_dataset)

    def recompute_bn_statistics(self) -> None:
        """PreciseBN before an evaluation: the BatchNorm running statistics become the exact
        statistics over ``precise_bn`` training batches, taken without augmentation (the
        evaluation transform), in an order drawn from (seed, epoch) so that it repeats on resume,
        and summed over all torchrun processes. Nothing happens for a model without BatchNorm."""
        if not self.precise_bn or not batchnorm_layers(self.model):
            return
        path = self._unaugmented_train_path()
        generator = batching.seeded_generator(self.seed, self.epoch)
        batches = precise_bn_batches(
            len(path.dataset), self.precise_bn, self.batch_size, generator, self.rank, self.world_size
        )
        loader = self._bar(path.fixed_batches(batches), f"precise BN epoch {self.epoch}")
        with self._autocast():  # all_reduce: the statistics of all processes' images together
            recompute_bn_statistics(self.model, (images for images, _ in loader), distributed.all_reduce)

    def run(self, epochs: int, logging_parameters: LoggingParameters, resume: bool = False) -> dict:
        """A new run of ``epochs`` epochs (resumed: up to ``epochs`` in total); returns the run dict.

        The main process holds the run's lock meanwhile, so a second live run on the same
        checkpoints is refused (``UserError``) instead of mixing its files with this one's. A loss
        that becomes NaN/inf raises ``TrainingDiverged`` after the JSON of the finished epochs is
        written, marked not completed.
        """
        if epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {epochs}")
        files = self.paths(logging_parameters)
        with run_files.locked(files, self.run_info.get("argv")) if self.is_main else contextlib.nullcontext():
            run, best_val = self._start_or_resume(files, logging_parameters, epochs, resume)
            for _ in range(self.epoch, epochs):
                lr = self.optimizer.param_groups[0]["lr"]  # what this epoch trains with
                train, val, test = self._train_and_evaluate(run, files)
                run_files.append_epoch(
                    run, train, val, test, self.last_train_seconds, self.last_train_images_per_sec
                )
                run.setdefault("lr", [None] * (self.epoch - 1)).append(lr)  # None: epochs before the log
                if self.options.scheduler is not None:
                    self.options.scheduler.step()  # per epoch: docs/design.md#training-options
                if self.is_main:
                    best_val = self._keep_epoch(files, run, (train, val, test), best_val, epochs)
        return run

    def _train_and_evaluate(self, run: dict, files: RunFiles) -> tuple:
        """One epoch: train, PreciseBN, validate and test; returns (train loss and accuracy, val, test).
        On divergence the finished epochs are written, marked not completed, before it is raised."""
        try:
            train = self.train_one_epoch()
            self.recompute_bn_statistics()
            val, test = self._through(self.validate), self._through(self.test)
            if not (val.finite and test.finite):  # finite weights, but overflowing outputs
                raise TrainingDiverged(self.epoch, self._last_batch)
        except TrainingDiverged as exc:
            if self.is_main:
                run.update(completed=False, diverged=str(exc))
                run_files.write_run(files.json, run)
            raise
        return train, val, test

    def _keep_epoch(self, files: RunFiles, run: dict, results: tuple, best_val: float, epochs: int) -> float:
        """Write the epoch: the runs JSON, the checkpoints (a new best when validation is strictly
        better; never test) and the epoch log, and print its line. Returns the best validation score."""
        train, val, test = results
        score = selection_score(self.options.select_by, val)
        best = None  # the run's new best fields: the run takes them once their checkpoint is saved
        if score is not None and score > best_val:
            best_val = score
            best = dict(best_epoch=self.epoch, best_val_acc=val.accuracy, test_acc_at_best=test.accuracy)
        run["completed"] = self.epoch >= epochs
        run_files.save_epoch(files, self.model, self.optimizer, run, best_val, best, self.options.scheduler)
        if self.options.epoch_log is not None:
            self.options.epoch_log(run, files.json)
        print(
            f"epoch {self.epoch}/{epochs}: train loss {train[0]:.4f} acc {train[1]:.2f}% | "
            f"val loss {val.loss:.4f} acc {val.accuracy:.2f}% | "
            f"test loss {test.loss:.4f} acc {test.accuracy:.2f}%",
            file=sys.stderr,
        )
        return best_val

    # ------------------------------------------------------------------ the run's files
    def paths(self, logging_parameters: LoggingParameters) -> RunFiles:
        return run_paths(self.out_dir, self.checkpoint_dir, logging_parameters)

    def _start_or_resume(
        self, files: RunFiles, logging_parameters: LoggingParameters, epochs: int, resume: bool
    ) -> tuple[dict, float]:
        """(run dict, best validation accuracy so far): a new run, or with ``resume`` the run in
        ``files.last`` with the model, optimizer, epoch and RNG states restored from it
        (``run_files.resume`` refuses another model's or another protocol's file)."""
        lp = logging_parameters
        if not resume:
            names = (lp.model_name, lp.dataset_name, lp.optimizer_name, lp.optimizer_params)
            facts = dict(seed=self.seed, device=str(self.device), world_size=self.world_size)
            self.epoch = 0  # a new run counts its own epochs, however many this Trainer trained before
            return run_files.new_run(*names, **facts, extra=self.run_info), -math.inf
        protocol = self.run_info.get("protocol")  # every rank loads the same file
        run, best_val, self.epoch = run_files.resume(
            files.last,
            self.model,
            self.optimizer,
            self.device,
            lp.model_name,
            protocol,
            self.options.scheduler,
        )
        run["completed"] = self.epoch >= epochs
        if self.is_main:
            print(f"resuming {files.last} after epoch {self.epoch}", file=sys.stderr)
            run_files.settle_resumed(files, run)
            if self.options.epoch_log is not None and run["train_loss"]:  # a killed run's last rows
                self.options.epoch_log(run, files.json)
        return run, best_val

    # ------------------------------------------------------------------ helpers
    def _path(self, dataset, keep: bool = True) -> batching.BatchPath:
        """``dataset``'s batch path (``batching.choose_batch_path``), chosen at its first use and kept."""
        if id(dataset) in self._paths:
            return self._paths[id(dataset)]
        path = batching.choose_batch_path(
            dataset, self.device, self.num_workers, self._workers_asked, self.memory_format
        )
        if keep:
            self._paths[id(dataset)] = path
        return path

    def _batches(self, dataset, train: bool) -> batching.DeviceBatches:
        """The (kept) training or evaluation batches of ``dataset`` for this process."""
        key = (id(dataset), train)
        if key not in self._loaders:
            sampler = batching.epoch_sampler(len(dataset), train, self.rank, self.world_size, self.seed)
            if train and self.options.train_sampler is not None:
                sampler = self.options.train_sampler(dataset, self.rank, self.world_size, self.seed)
            batch_size = self.batch_size // self.world_size if train else self.eval_batch_size
            self._loaders[key] = self._path(dataset).epoch_batches(sampler, batch_size, self.seed, train)
        return self._loaders[key]

    def _unaugmented_train_path(self) -> batching.BatchPath:
        """The training split as the evaluation transform sees it: its own path when it has a
        batched form (batches of indices are not augmented), else a shallow copy with the
        validation set's transform (the images and any cache are shared)."""
        path = self._path(self.train_dataset)
        if path.batched is not None or not hasattr(self.train_dataset, "transform"):
            return path
        view = copy.copy(self.train_dataset)
        view.transform = getattr(self.validation_dataset, "transform", None)
        return self._path(view, keep=False)  # a new view each epoch: not kept

    def _through(self, split_method) -> EvalResult:
        """Call ``validate`` or ``test`` (so a subclass that overrides them is honoured) and return
        the full result of that pass; when the override did not evaluate through
        ``evaluate_model_on_dataloader``, only its (loss, accuracy) are kept, without extra metrics."""
        self.last_eval = None
        loss, accuracy = split_method()
        if self.last_eval is not None and (self.last_eval.loss, self.last_eval.accuracy) == (loss, accuracy):
            return self.last_eval
        return EvalResult(loss, accuracy, np.zeros(0, np.int64), np.zeros((0, 2), np.float32), 0.0)

    def _bar(self, batches, desc: str):
        return tqdm(batches, desc=desc, disable=not self.progress, **PROGRESS_BAR)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)
