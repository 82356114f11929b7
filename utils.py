"""Shared helpers: names, transforms, data-root resolution, model building, checkpoints, safe
file writes and the command-line error handling used by every script."""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from faces_dataset import DEMO_HINT, DataError, FacesDataset
from xception import XceptionWeightsError

DATASET_NAMES = ("fakes_dataset", "synthetic_dataset")
SPLITS = ("train", "val", "test")
MODEL_NAMES = ("SimpleNet", "XceptionBased")
OPTIMIZER_NAMES = ("SGD", "Adam")
CROP_PADDING = 4
DATASET_TITLES = {"fakes_dataset": "Deepfakes dataset", "synthetic_dataset": "Synthetic images dataset"}

NORMALIZE_MEAN = (0.4914, 0.4822, 0.4465)
NORMALIZE_STD = (0.2023, 0.1994, 0.2010)

DATA_ROOT_ENV = "FACES_DATA_ROOT"
DEFAULT_DATA_ROOT = os.path.join("..", "Assignment4_datasets")


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file): printed as one line, no traceback."""


# ----------------------------------------------------------------------------- names and checks
def check_name(kind: str, name: str, valid) -> str:
    if name not in valid:
        raise UserError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")
    return name


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


# ----------------------------------------------------------------------------- transforms
class StudyTransform(v2.Compose):
    """The SPEC transform of one split; ``train`` says whether it augments.

    The Trainer recognises it and runs the same arithmetic batched (``augment_uint8`` then
    ``normalize_batch``), so a dataset built by ``load_dataset`` trains identically either way.
    """
    takes_uint8_tensor = True  # FacesDataset hands it the uint8 tensor, not a PIL image

    def __init__(self, train: bool):
        steps = [v2.ToImage()]
        if train:
            steps += [v2.RandomCrop(256, padding=CROP_PADDING), v2.RandomHorizontalFlip()]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)]
        super().__init__(steps)
        self.train = train


def get_transforms(dataset_part: str) -> StudyTransform:
    """SPEC transforms, applied to a uint8 3x256x256 tensor (or a PIL image).

    train: RandomCrop(256, padding=4), RandomHorizontalFlip, to float in [0, 1], Normalize.
    val/test: to float in [0, 1], Normalize. Cropping and flipping the uint8 image before the
    float conversion gives the same numbers as the course order (ToTensor first) but is cheaper.
    """
    check_name("split", dataset_part, SPLITS)
    return StudyTransform(train=dataset_part == "train")


def draw_augmentation(n: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image RandomCrop/flip parameters for ``n`` images: an n x 3 tensor (top, left, flip)."""
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5).long().unsqueeze(1)
    return torch.cat([offsets, flips], dim=1)


def augment_uint8(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """RandomCrop(size, padding=4) then horizontal flip on a uint8 N x 3 x H x W batch.

    ``params`` rows are (top, left, flip) in the padded frame, as ``draw_augmentation`` gives.
    Equal, pixel for pixel, to padding with zeros, cropping at (top, left) and flipping, on any
    device.

    On the CPU each image is one NumPy copy (the flip fused in as a reversed view): NumPy copies
    run on one thread, whereas a torch copy per image starts a parallel region each time, which
    stalls for milliseconds whenever another process holds a core (measured: 10 ms an image on a
    busy 2-core machine, a third of the training time; benchmarks/README.md). On other devices
    (CUDA) it is ``_augment_gather``: a few kernels for the whole batch.
    """
    if images.device.type != "cpu":
        return _augment_gather(images, params)
    _, _, height, width = images.shape
    pad = CROP_PADDING
    src_all = images.numpy()
    out_np = np.zeros(src_all.shape, dtype=src_all.dtype)
    for k, (top, left, flip) in enumerate(params.tolist()):
        dy, dx = top - pad, left - pad  # shift of the crop window relative to the image
        src = src_all[k, :, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)]
        row, col = max(-dy, 0), max(-dx, 0)  # where the window's image part lands in the crop
        if flip:  # the crop mirrored: its column j is column width-1-j of the unflipped crop
            col = width - col - src.shape[2]
            src = src[:, :, ::-1]
        out_np[k, :, row:row + src.shape[1], col:col + src.shape[2]] = src
    return torch.from_numpy(out_np)


def _augment_gather(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """RandomCrop(padding=4) + flip of a uint8 N x C x H x W batch with (top, left, flip) rows, as
    one zero-pad and two gathers (rows, then columns; a flipped image reads its columns reversed)."""
    n, c, height, width = images.shape
    pad = CROP_PADDING
    params = params.to(images.device, dtype=torch.long)
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = params[:, 0:1] + torch.arange(height, device=images.device)
    cols = params[:, 1:2] + torch.arange(width, device=images.device)
    cols = torch.where(params[:, 2:3].bool(), cols.flip(1), cols)
    out = padded.gather(2, rows.view(n, 1, height, 1).expand(n, c, height, width + 2 * pad))
    return out.gather(3, cols.view(n, 1, 1, width).expand(n, c, height, width))


_NORMALIZE_CONSTANTS: dict = {}


def _normalize_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as 1x3x1x1 float32 tensors on ``device``, made once per device (creating them
    per batch on CUDA would be a host-to-device copy that waits for the GPU every batch)."""
    if device not in _NORMALIZE_CONSTANTS:
        _NORMALIZE_CONSTANTS[device] = (torch.tensor(NORMALIZE_MEAN, device=device).view(1, 3, 1, 1),
                                        torch.tensor(NORMALIZE_STD, device=device).view(1, 3, 1, 1))
    return _NORMALIZE_CONSTANTS[device]


def normalize_batch(images_uint8: torch.Tensor,
                    memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalised float32 (the test transform, batched, on any device).

    ``(x / 255 - mean) / std`` in float32, the arithmetic of ToTensor + Normalize, in three passes
    over one new tensor allocated in ``memory_format`` (the input is never modified; no extra
    layout copy). Same numbers, bit for bit, whatever the layout.
    """
    mean, std = _normalize_constants(images_uint8.device)
    out = torch.empty(images_uint8.shape, dtype=torch.float32, device=images_uint8.device,
                      memory_format=memory_format)
    return torch.div(images_uint8, 255.0, out=out).sub_(mean).div_(std)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Normalised float images -> float RGB in [0, 1] (for display)."""
    mean = torch.tensor(NORMALIZE_MEAN, device=images.device).view(-1, 3, 1, 1)
    std = torch.tensor(NORMALIZE_STD, device=images.device).view(-1, 3, 1, 1)
    out = images.reshape(-1, *images.shape[-3:]) * std + mean
    return out.reshape(images.shape).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- data
def resolve_data_root(data_root: str | None = None) -> str:
    """Where the datasets are: ``--data_root``, else $FACES_DATA_ROOT, else ../Assignment4_datasets.

    An explicit choice (flag or environment variable) that does not exist is an error; so is the
    default when nothing was chosen. The message lists what was tried.
    """
    if data_root:
        if not os.path.isdir(data_root):
            raise UserError(f"--data_root {data_root}: no such folder; {DEMO_HINT}")
        return data_root
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        if not os.path.isdir(env):
            raise UserError(f"${DATA_ROOT_ENV}={env}: no such folder; {DEMO_HINT}")
        return env
    if os.path.isdir(DEFAULT_DATA_ROOT):
        return DEFAULT_DATA_ROOT
    raise UserError(
        f"no datasets found: tried --data_root (not given), ${DATA_ROOT_ENV} (not set) and "
        f"{os.path.abspath(DEFAULT_DATA_ROOT)} (missing); point --data_root at a folder holding "
        f"fakes_dataset/ and synthetic_dataset/, or {DEMO_HINT}")


def split_path(dataset_name: str, dataset_part: str, data_root: str | None = None) -> str:
    check_name("dataset", dataset_name, DATASET_NAMES)
    check_name("split", dataset_part, SPLITS)
    return os.path.join(resolve_data_root(data_root), dataset_name, dataset_part)


def load_dataset(dataset_name: str, dataset_part: str, data_root: str | None = None,
                 cache_images: bool = False, skip_corrupt: bool = False) -> FacesDataset:
    """The ``FacesDataset`` of one split, with the train transform for train, else the test one."""
    path = split_path(dataset_name, dataset_part, data_root)
    if not os.path.isdir(path):
        raise DataError(f"{path}: missing split folder; expected <data root>/{dataset_name}/"
                        f"{{train,val,test}}/{{real,fake}}/; {DEMO_HINT}")
    return FacesDataset(path, transform=get_transforms(dataset_part), cache_images=cache_images,
                        skip_corrupt=skip_corrupt)


# ----------------------------------------------------------------------------- models
def load_model(model_name: str, pretrained: bool = True, weights_path: str | None = None
               ) -> torch.nn.Module:
    """Build only the model asked for. SimpleNet never touches Xception weights."""
    check_name("model", model_name, MODEL_NAMES)
    import models  # late import: keeps `utils` light for scripts that only read data
    if model_name == "SimpleNet":
        return models.SimpleNet()
    return models.get_xception_based_model(pretrained=pretrained, weights_path=weights_path)


def get_nof_params(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def get_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else the CPU; 'cuda' without a GPU is an error."""
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device; use auto, cpu or cuda") from None


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- files
def ensure_dir(path: str) -> str:
    """Create ``path`` (and parents) when missing; a failure is a one-line ``UserError``."""
    if path:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:  # a regular file in the way, read-only parent, disk full ...
            raise UserError(f"{path}: cannot create output folder ({exc.strerror or exc}); "
                            "choose another folder") from None
        if not os.access(path, os.W_OK | os.X_OK):  # fail now, not after the first epoch
            raise UserError(f"{path}: folder is not writable; choose another folder")
    return path


_KILL_IN_SAVE_ENV = "FACES_TEST_KILL_IN_SAVE"  # test hook, see _test_kill_hook
_save_counts: dict[str, int] = {}


def _test_kill_hook(path: str) -> None:
    """Test-only: with ``FACES_TEST_KILL_IN_SAVE=<file name>:<n>`` this process SIGKILLs itself
    during the n-th atomic write of a file of that name, after the temp file is complete and
    before the rename (tests/test_crash_safety.py). Unset (always, outside tests): does nothing."""
    spec = os.environ.get(_KILL_IN_SAVE_ENV)
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if os.path.basename(path) == name:
        _save_counts[name] = _save_counts.get(name, 0) + 1
        if _save_counts[name] == int(count):
            import signal
            os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write through ``write(tmp_path)`` into a temp file beside ``path``, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never a half-written file.
    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    ensure_dir(folder)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except PermissionError:
        raise UserError(f"{folder}: folder is not writable; choose another output folder") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        _test_kill_hook(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, data) -> None:
    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
    atomic_write(path, write)


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(path, write)


def atomic_torch_save(obj, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_figure(fig, path: str, **kwargs) -> str:
    """Save a matplotlib figure atomically (format from the extension) and close it."""
    import matplotlib.pyplot as plt
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
    plt.close(fig)
    return path


def move_aside(path: str, reason: str) -> str:
    """Rename a bad file to ``<path>.corrupt-<time>`` (never delete it) and warn."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    while os.path.exists(aside):
        aside += "_"
    os.replace(path, aside)
    warnings.warn(f"{path}: {reason}; moved aside to {aside}", stacklevel=2)
    return aside


def read_runs(path: str, missing_ok: bool = True, repair: bool = False) -> list:
    """Read a metrics JSON (a list of runs).

    A missing file is ``[]`` when ``missing_ok``. A corrupt file is moved aside with a warning
    when ``repair`` (the trainer, before appending), else it is an error naming the file.
    """
    if not os.path.exists(path):
        if missing_ok:
            return []
        raise UserError(f"{path}: no such metrics JSON; train first with train_main.py")
    try:
        with open(path) as handle:
            runs = json.load(handle)
        if isinstance(runs, dict):  # a single run written by other tools
            runs = [runs]
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise ValueError("expected a JSON list of runs")
        return runs
    except (ValueError, UnicodeDecodeError) as exc:
        if repair:
            move_aside(path, f"corrupt metrics JSON ({exc})")
            return []
        raise UserError(f"{path}: corrupt metrics JSON ({exc}); fix or remove the file") from None


# ----------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str, device: torch.device | str = "cpu") -> dict:
    """``torch.load`` a checkpoint safely (``weights_only=True``) onto ``device``."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint; train first with train_main.py "
                        "or pass --checkpoint_path")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, unsafe global ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable checkpoint ({first_line[:200]}); it may be truncated, "
                        "corrupt, or hold code (refused: only weights are loaded)") from None
    if isinstance(checkpoint, dict) and "model" not in checkpoint and \
            all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        checkpoint = {"model": checkpoint}  # a bare state dict
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise UserError(f"{path}: not a training checkpoint (no 'model' entry)")
    return checkpoint


def model_name_of_state_dict(state_dict: dict) -> str | None:
    """Which of our models a state dict belongs to, from its keys."""
    keys = set(state_dict)
    if "fc1.weight" in keys and "conv1.weight" in keys:
        return "SimpleNet"
    if "block1.skip.weight" in keys:
        return "XceptionBased"
    return None


def load_model_from_checkpoint(model_name: str, checkpoint_path: str,
                               device: torch.device | str = "cpu") -> torch.nn.Module:
    """Build ``model_name`` without pretrained weights, load the checkpoint's ``model``, eval mode.

    On the CPU and CUDA the model is channels-last (its inputs may stay NCHW): the analysis runs
    faster so (saliency 1.7x, Grad-CAM 1.2x for SimpleNet on 2 CPU cores; benchmarks/README.md),
    with the same numbers up to float rounding.
    """
    checkpoint = load_checkpoint(checkpoint_path, device)
    state_dict = checkpoint["model"]
    found = checkpoint.get("model_name") or model_name_of_state_dict(state_dict)
    if found and found != model_name:
        raise UserError(f"{checkpoint_path}: holds a {found} model, but -m {model_name} was given; "
                        f"pass -m {found} (models: {', '.join(MODEL_NAMES)})")
    model = load_model(model_name, pretrained=False)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise UserError(f"{checkpoint_path}: does not fit a {model_name} model "
                        f"({str(exc).splitlines()[0][:200]}); models: {', '.join(MODEL_NAMES)}") from None
    fast = torch.channels_last if resolve_channels_last("auto", device) else torch.contiguous_format
    return model.to(device, memory_format=fast).eval()


def resolve_channels_last(setting, device: torch.device) -> bool:
    """``channels_last`` of the Trainer and of the analysis scripts' models: True/'on',
    False/'off', or 'auto' (the default): on for CPU and CUDA, where it measured faster for both
    models (benchmarks/README.md), else off."""
    if setting in ("auto", None):
        return torch.device(device).type in ("cpu", "cuda")
    if setting in ("on", "off"):
        return setting == "on"
    return bool(setting)


# ----------------------------------------------------------------------------- output names
SAMPLES_FIGURE = "datasets_samples.png"
"""The samples figure of plot_samples_of_faces_datasets.py (in the figures folder)."""

FIGURE_SUFFIXES = {
    "curves": ("losses_plot", "accuracies_plot"),                          # plot_accuracy_and_loss.py
    "numerical": ("roc_curve", "det_curve"),                               # numerical_analysis.py
    "gradcam": ("Real_Image_grad_cam", "Fake_Image_grad_cam"),             # grad_cam_analysis.py (label 0, 1)
    "saliency": ("saliency_maps_and_images_pairs", "mean_saliency_maps"),  # saliency_map.py
}
"""The SPEC section 4 figures of one run, ``<D>_<M>_<suffix>.png``, by the script that writes them."""


def figure_path(figures_dir: str, dataset_name: str, model_name: str, suffix: str) -> str:
    """``<figures_dir>/<D>_<M>_<suffix>.png`` (the SPEC section 4 names)."""
    return os.path.join(figures_dir, f"{dataset_name}_{model_name}_{suffix}.png")


# ----------------------------------------------------------------------------- CLI
class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``<prog>: error: <message> (see --help)``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_data_root_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_root", default=None,
                        help=f"folder holding fakes_dataset/ and synthetic_dataset/; default: "
                             f"${DATA_ROOT_ENV}, else {DEFAULT_DATA_ROOT}")


def add_analysis_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every analysis script shares (SPEC section 4)."""
    parser.add_argument("--model", "-m", default="XceptionBased", choices=MODEL_NAMES,
                        help="which model the checkpoint holds")
    parser.add_argument("--checkpoint_path", "-cpp", default="checkpoints/XceptionBased.pt",
                        help="checkpoint written by train_main.py (its 'model' entry is loaded)")
    parser.add_argument("--dataset", "-d", default="fakes_dataset", choices=DATASET_NAMES,
                        help="dataset whose test split is analysed")
    add_data_root_flag(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--figures_dir", default="figures", help="where figures are written")
    add_debug_flag(parser)


def proc_bytes(path: str, key: str) -> int | None:
    """The ``key:`` line of a Linux /proc file given in kB, in bytes; ``None`` where unknown."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def ru_maxrss_mb(usage) -> float:
    """The peak resident set size of a ``resource.getrusage``/``os.wait4`` result, in MiB
    (``ru_maxrss`` is in bytes on macOS, in KiB elsewhere)."""
    return usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _peak_rss_bytes() -> int:
    """This process's peak RSS so far (``getrusage``; 0 where there is none, as on Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return int(ru_maxrss_mb(resource.getrusage(resource.RUSAGE_SELF)) * 1024**2)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where unknown)."""
    return proc_bytes("/proc/self/status", "VmRSS") or 0


XCEPTION_TRAIN_BYTES_PER_IMAGE = 200 * 1024**2
"""Memory that XceptionBased training needs per image of a batch at 256 x 256 beyond the model:
batch 32 keeps 5.6 GiB of activations for the backward pass, peak RSS rises by 6.4 GB
(benchmarks/README.md)."""


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory this process can still use: free GPU memory on CUDA, ``MemAvailable`` of
    /proc/meminfo on the CPU; ``None`` where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return proc_bytes("/proc/meminfo", "MemAvailable")


ACTIVATION_CHECKPOINTING_SETTINGS = ("auto", "on", "off")


def add_activation_checkpointing_flag(parser) -> None:
    """``--activation_checkpointing auto|on|off`` (a bare flag means on), as train_main.py and
    run_study.py take it (see ``resolve_activation_checkpointing``)."""
    parser.add_argument("--activation_checkpointing", nargs="?", const="on", default="auto",
                        choices=ACTIVATION_CHECKPOINTING_SETTINGS,
                        help="XceptionBased training: keep only block inputs for the backward pass and "
                             "recompute the blocks there: the same results with about 40%% less peak "
                             "training memory, at about 0.8x the speed (benchmarks/README.md). auto: on "
                             "when the training would not fit the free memory (RAM, or GPU memory on "
                             "CUDA); a bare --activation_checkpointing means on")


def resolve_activation_checkpointing(setting: str, model_name: str, device: torch.device, batch_size: int,
                                     available: int | None = None, processes: int = 1,
                                     extra_bytes: int = 0) -> tuple[bool, str | None]:
    """Whether to train with activation checkpointing, and a note saying why when 'auto' turns it on.

    'on'/'off' as given; 'auto' turns it on only for XceptionBased when its training needs more
    memory (``batch_size`` x ``XCEPTION_TRAIN_BYTES_PER_IMAGE`` + 1 GiB headroom, times
    ``processes`` sharing the memory, plus ``extra_bytes`` that will be allocated there later,
    such as the image cache the Trainer copies to the GPU) than is ``available`` (default:
    ``available_memory_bytes``). Checkpointing gives the same results, so 'auto' only trades
    speed (about 0.8x) for memory.
    """
    check_name("activation checkpointing setting", setting, ACTIVATION_CHECKPOINTING_SETTINGS)
    if setting != "auto":
        return setting == "on", None
    if model_name != "XceptionBased":
        return False, None
    available = available_memory_bytes(device) if available is None else available
    need = processes * (batch_size * XCEPTION_TRAIN_BYTES_PER_IMAGE + 1024**3) + extra_bytes
    if available is None or need <= available:
        return False, None
    return True, (f"XceptionBased at batch {batch_size} needs about {need / 1e9:.1f} GB for training, "
                  f"{available / 1e9:.1f} GB is available on {torch.device(device).type}: activation "
                  "checkpointing is on (the same results, about 0.8x the speed; "
                  "--activation_checkpointing off to override)")


def load_analysis_inputs(args) -> tuple[torch.device, torch.nn.Module, FacesDataset]:
    """What every analysis script starts from, given the flags of ``add_analysis_flags``: the device,
    the checkpoint's model (built without ImageNet weights, eval mode) and the test split."""
    device = get_device(args.device)
    model = load_model_from_checkpoint(args.model, args.checkpoint_path, device)
    return device, model, load_dataset(args.dataset, "test", args.data_root)


def apply_image_cache(datasets, mode: str = "auto", limit_gb: float = 2.2,
                      progress: bool = True, rss_limit_gb: float | None = 3.0,
                      reserve_gb: float = 0.75) -> list[bool]:
    """Decode datasets into RAM (uint8, 192 KiB an image): 'on' all, 'off' none, 'auto' each split
    in order when the cache total stays within ``limit_gb`` GiB AND the process's RSS now plus the
    cache plus ``reserve_gb`` for training stays within ``rss_limit_gb`` GiB (``None``: no RSS rule).

    The RSS rule keeps SimpleNet's peak RSS under 3 GB (2.09 GB measured): with this torch build
    the process holds ~0.9 GB before any data, so the full-size fakes train split (2.0 GiB) is
    decoded every epoch instead while val and test are cached (benchmarks/README.md); the demo
    data and smaller splits are all cached. Where the current RSS cannot be read (no /proc), the
    process's peak so far stands in for it.
    """
    check_name("cache mode", mode, ("auto", "on", "off"))
    budget = limit_gb * 1024**3
    if mode == "auto" and rss_limit_gb is not None:
        rss = current_rss_bytes() or _peak_rss_bytes()
        budget = min(budget, rss_limit_gb * 1024**3 - rss - reserve_gb * 1024**3)
    used = 0.0
    done = []
    for dataset in datasets:
        need = len(dataset) * 3 * 256 * 256
        take = mode == "on" or (mode == "auto" and used + need <= budget)
        if take and hasattr(dataset, "cache_images"):
            dataset.cache_images(progress=progress)
            used += need
        done.append(bool(take))
    return done


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show full Python tracebacks instead of one-line errors")


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; user errors print one line ``<script>: error: ...`` and exit 2.

    With ``--debug`` in argv the traceback is shown instead.
    """
    argv = sys.argv[1:] if argv is None else argv
    prog = os.path.basename(sys.argv[0]) or "script"
    try:
        result = main(argv)
        return int(result) if isinstance(result, int) else 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, DataError, XceptionWeightsError, FileNotFoundError, PermissionError) as exc:
        if "--debug" in argv:
            raise
        print(f"{prog}: error: {one_line_message(exc)}", file=sys.stderr)
        return 2


def one_line_message(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error raised in a DataLoader worker arrives wrapped
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): keep only the
    original message, which names the file, not the worker's traceback."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        name = type(exc).__name__
        for i in range(len(lines) - 1, -1, -1):
            head, sep, rest = lines[i].partition(": ")
            if sep and head.rsplit(".", 1)[-1] == name:
                lines = [rest] + lines[i + 1:]
                break
    return " ".join(lines) or type(exc).__name__


# ----------------------------------------------------------------------------- metrics
def equal_error_rate(labels, fake_scores) -> tuple[float, float]:
    """(EER, threshold at the EER) from sklearn's ROC: the point where FPR and FNR cross."""
    from sklearn.metrics import roc_curve
    fpr, tpr, thresholds = roc_curve(labels, fake_scores, pos_label=1)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0), float(thresholds[i])


def binary_metrics(labels, fake_scores, threshold: float = 0.5) -> dict:
    """Detection metrics of P(fake) scores against labels (1 = fake), computed with sklearn.

    AUC, EER and AP are ``None`` when the labels hold a single class (they are undefined).
    """
    from sklearn.metrics import (average_precision_score, balanced_accuracy_score, confusion_matrix,
                                 roc_auc_score)
    labels = np.asarray(labels, dtype=np.int64)
    fake_scores = np.asarray(fake_scores, dtype=np.float64)
    predictions = (fake_scores > threshold).astype(np.int64)  # ties go to real, like argmax
    matrix = confusion_matrix(labels, predictions, labels=[0, 1])
    per_class = [float(100.0 * matrix[c, c] / matrix[c].sum()) if matrix[c].sum() else None
                 for c in (0, 1)]
    both = len(np.unique(labels)) == 2
    eer, eer_threshold = equal_error_rate(labels, fake_scores) if both else (None, None)
    return {
        "auc": float(roc_auc_score(labels, fake_scores)) if both else None,
        "eer": eer,
        "eer_threshold": eer_threshold,
        "ap": float(average_precision_score(labels, fake_scores)) if both else None,
        "accuracy": float(100.0 * (predictions == labels).mean()) if len(labels) else None,
        "balanced_acc": float(100.0 * balanced_accuracy_score(labels, predictions)) if both else None,
        "per_class_acc": per_class,
        "confusion_matrix": matrix.tolist(),
        "n_real": int((labels == 0).sum()),
        "n_fake": int((labels == 1).sum()),
    }
