"""Shared fixtures: tiny generated datasets (no real data, nothing downloaded)."""

from __future__ import annotations

import os
import pickletools
import shutil
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOKED = os.path.join(ROOT, "tests", "hooked_train_main.py")  # train_main.py with the crash tests' hooks
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("XCEPTION_NO_DOWNLOAD", "1")  # never reach for the network in tests


def pickled_calls(path) -> set[tuple[str, str]]:
    """The (module, name) callables a ``torch.save`` file's pickle would import and call, read
    statically with pickletools: nothing is unpickled, so no code in the file runs.

    The controls of the refused-payload tests use it to prove the payload is live (an unsafe
    ``torch.load`` would call it) without ever loading the file unsafely.
    """
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    calls, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            calls.add((strings[-2], strings[-1]))
        elif opcode.name == "GLOBAL":
            calls.add(tuple(arg.split(" ", 1)))
    return calls


def counted_eer(labels, scores) -> float:
    """The EER by the field's usual recipe, independent of lib/metrics: FPR and TPR counted at each
    threshold (every score, and one above them all), then scipy's root of 1 - FPR - TPR(FPR)."""
    from scipy.optimize import brentq

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    fpr = np.array([np.mean(scores[labels == 0] >= t) for t in thresholds])
    tpr = np.array([np.mean(scores[labels == 1] >= t) for t in thresholds])
    return brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0, xtol=1e-14)


def make_image(rng: np.random.Generator, fake: bool, size: int = 256) -> Image.Image:
    """A noisy image; fakes carry a faint periodic pattern a CNN can learn."""
    base = rng.integers(60, 200, size=3)
    image = base + rng.normal(0, 25, size=(size, size, 3))
    if fake:
        yy, xx = np.mgrid[0:size, 0:size]
        image += 30 * (((yy // 4) + (xx // 4)) % 2)[..., None]
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def make_split(folder: str, n_real: int, n_fake: int, seed: int, name: str = "img{i:03d}.png") -> None:
    """``n_real`` images in ``folder/real`` and ``n_fake`` in ``folder/fake``, named by the format
    ``name`` of the image number ``i`` and the class folder ``kind``."""
    rng = np.random.default_rng(seed)
    for class_dir, count, fake in (("real", n_real, False), ("fake", n_fake, True)):
        os.makedirs(os.path.join(folder, class_dir), exist_ok=True)
        for i in range(count):
            make_image(rng, fake).save(os.path.join(folder, class_dir, name.format(i=i, kind=class_dir)))


SMALL_COUNTS = {
    "train": (2, 2),
    "val": (1, 1),
    "test": (1, 1),
}  # split -> (n_real, n_fake), 4 training images


def make_tree(root: str, counts=None, seed: int = 0) -> str:
    """Both datasets, all splits, under ``root``; ``counts`` maps split -> (n_real, n_fake)."""
    counts = counts or {"train": (8, 4), "val": (4, 2), "test": (4, 2)}
    for d, dataset in enumerate(("fakes_dataset", "synthetic_dataset")):
        for s, (split, (n_real, n_fake)) in enumerate(counts.items()):
            make_split(os.path.join(root, dataset, split), n_real, n_fake, seed * 100 + d * 10 + s)
    return root


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """``module_tmp(name)`` makes a fresh folder for a module-scoped fixture; every folder it made
    is removed when the module's tests are done. Checkpoints are large
    (benchmarks/README.md#checkpoints-and-the-test-suites-disk), so keeping them to the session's
    end would fill a small disk (pytest.ini removes each passing test's own tmp_path the same way)."""
    made = []

    def mktemp(name: str):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def flush_denormals():
    """Random-init Xception activations decay into float32 denormals, which are ~10x slower on the
    CPU; flushing them to zero keeps a module's tests fast and changes no checked number. Use it
    with ``pytestmark = pytest.mark.usefixtures("flush_denormals")``."""
    import torch

    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """A read-only-by-convention tiny tree: train 8/4, val 4/2, test 4/2 per dataset."""
    return make_tree(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="module")
def simplenet_checkpoint(module_tmp) -> str:
    """A random-init SimpleNet checkpoint (seed 3) in train_main.py's format (a 'model' entry)."""
    import torch

    from models import SimpleNet

    torch.manual_seed(3)
    path = module_tmp("ckpt") / "SimpleNet.pt"
    torch.save({"model": SimpleNet().state_dict(), "epoch": 1}, path)
    return str(path)


def train_argv(data, work, *extra: str) -> list[str]:
    """train_main.py's flags for a quick in-process run on ``data``: no worker processes, no
    progress bars, metrics under ``work/out`` and checkpoints under ``work/ck``; then ``extra``
    (a later flag wins)."""
    return [
        "--data_root",
        str(data),
        "--num_workers",
        "0",
        "--no_progress",
        "--out_dir",
        str(work / "out"),
        "--checkpoint_dir",
        str(work / "ck"),
        *extra,
    ]


def analysis_argv(data_root, work, *extra: str) -> list[str]:
    """An analysis script's flags for a quick CPU run on ``data_root``: figures under ``work/fig``,
    JSON under ``work/out``, no progress bars; then ``extra``."""
    return [
        "--data_root",
        str(data_root),
        "--figures_dir",
        str(work / "fig"),
        "--out_dir",
        str(work / "out"),
        "--device",
        "cpu",
        "--no_progress",
        *extra,
    ]


def cpu_trainer(model, optimizer, splits, batch_size: int = 4, trainer_class=None, **kwargs):
    """A ``Trainer`` (or ``trainer_class``) of ``model`` with cross-entropy loss on the CPU, over
    the train, val and test datasets ``splits``, without worker processes or (unless
    ``progress=True``) progress bars; ``kwargs`` go to the Trainer."""
    from torch import nn

    from trainer import Trainer

    kwargs.setdefault("progress", False)
    return (trainer_class or Trainer)(
        model, optimizer, nn.CrossEntropyLoss(), batch_size, *splits, device="cpu", num_workers=0, **kwargs
    )


def one_line_error(capsys, main, argv, *needles) -> str:
    """Run the CLI entry in-process; expect exit 2 and exactly one stderr line holding ``needles``."""
    from lib.cli import run_cli

    code = run_cli(main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert ": error: " in lines[0] and "Traceback" not in err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def demo_videos(tmp_path_factory) -> str:
    """Read-only by convention: make_demo_videos.py's FF++-style set, 3 pairs (one a split), both
    methods, 8 frames a video, with OUT/boxes.json (18 small videos)."""
    import make_demo_videos

    root = tmp_path_factory.mktemp("demo_videos") / "ffpp"
    make_demo_videos.generate(root, pairs=3, frames=8, seed=0, workers=2, progress=False)
    return str(root)


def prep_argv(videos, out, *extra) -> list[str]:
    """prepare_videos.py's flags for a quick run on the FF++-style ``videos`` with their split
    files into ``out`` (dataset ``demo_ffpp``): the Haar cascade, 4 frames, one process, no
    progress bar; then ``extra`` (a later flag wins)."""
    argv = ["--input", str(videos), "--splits", os.path.join(str(videos), "splits"), "--out", str(out)]
    argv += [
        "--dataset",
        "demo_ffpp",
        "--frames",
        "4",
        "--detector",
        "haar",
        "--workers",
        "1",
        "--no_progress",
    ]
    return argv + list(extra)


@pytest.fixture(scope="session")
def prepared_videos(demo_videos, tmp_path_factory) -> str:
    """Read-only by convention: the data root holding ``demo_ffpp``, ``demo_videos`` prepared
    with ``prep_argv``."""
    import prepare_videos

    root = tmp_path_factory.mktemp("prepared_videos")
    assert prepare_videos.main(prep_argv(demo_videos, root)) == 0
    return str(root)
