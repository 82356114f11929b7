"""Memory probes (/proc, getrusage, CUDA) and the policies built on them: whether XceptionBased
trains with activation checkpointing (``--activation_checkpointing auto``) and which splits are
decoded into RAM (``--cache_images auto``)."""

from __future__ import annotations

import sys

import torch

from lib.cli import check_name
from lib.model_specs import MODEL_SPECS


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
"""Memory that XceptionBased training needs per image of a batch at 256 x 256 beyond the model: the
activations kept for the backward pass, with a margin (benchmarks/README.md#not-met-and-why)."""


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
    parser.add_argument(
        "--activation_checkpointing",
        nargs="?",
        const="on",
        default="auto",
        choices=ACTIVATION_CHECKPOINTING_SETTINGS,
        help="XceptionBased training: keep only block inputs for the backward pass and "
        "recompute the blocks there: the same results with less peak training "
        "memory, somewhat slower (benchmarks/README.md). auto: on "
        "when the training would not fit the free memory (RAM, or GPU memory on "
        "CUDA); a bare --activation_checkpointing means on",
    )


def resolve_activation_checkpointing(
    setting: str,
    model_name: str,
    device: torch.device,
    batch_size: int,
    available: int | None = None,
    processes: int = 1,
    extra_bytes: int = 0,
) -> tuple[bool, str | None]:
    """Whether to train with activation checkpointing, and a note saying why when 'auto' turns it on.

    'on'/'off' as given; 'auto' turns it on only for a model that supports it (``lib.model_specs``:
    XceptionBased) when its training needs more memory (``batch_size`` x
    ``XCEPTION_TRAIN_BYTES_PER_IMAGE`` + 1 GiB headroom, times
    ``processes`` sharing the memory, plus ``extra_bytes`` that will be allocated there later,
    such as the image cache the Trainer copies to the GPU) than is ``available`` (default:
    ``available_memory_bytes``). Checkpointing gives the same results, so 'auto' only trades
    speed for memory.
    """
    check_name("activation checkpointing setting", setting, ACTIVATION_CHECKPOINTING_SETTINGS)
    if setting != "auto":
        return setting == "on", None
    spec = MODEL_SPECS.get(model_name)
    if spec is None or not spec.activation_checkpointing:  # only XceptionBased implements it
        return False, None
    available = available_memory_bytes(device) if available is None else available
    need = processes * (batch_size * XCEPTION_TRAIN_BYTES_PER_IMAGE + 1024**3) + extra_bytes
    if available is None or need <= available:
        return False, None
    return True, (
        f"XceptionBased at batch {batch_size} needs about {need / 1e9:.1f} GB for training, "
        f"{available / 1e9:.1f} GB is available on {torch.device(device).type}: activation "
        "checkpointing is on (the same results, somewhat slower; "
        "--activation_checkpointing off to override)"
    )


def apply_image_cache(
    datasets,
    mode: str = "auto",
    limit_gb: float = 2.2,
    progress: bool = True,
    rss_limit_gb: float | None = 3.0,
    reserve_gb: float = 0.75,
) -> list[bool]:
    """Decode datasets into RAM (uint8, 192 KiB an image): 'on' all, 'off' none, 'auto' each split
    in order when the cache total stays within ``limit_gb`` GiB AND the process's RSS now plus the
    cache plus ``reserve_gb`` for training stays within ``rss_limit_gb`` GiB (``None``: no RSS rule).

    The RSS rule keeps SimpleNet's full-size training within its memory target: there the fakes
    train split is read every epoch instead while val and test are cached
    (benchmarks/README.md#not-met-and-why); the demo data and smaller splits are all cached.
    Where the current RSS cannot be read (no /proc), the process's peak so far stands in for it.
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
