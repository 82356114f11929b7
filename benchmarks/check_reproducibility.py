"""What may differ between machines at the same seed: one training run, repeated under the settings
that differ from machine to machine, compared number by number with the run at this machine's
defaults.

Variants (each a ``train_main.py`` subprocess with the study's protocol, Adam, lr 0.001, batch 32):
- the data paths a machine's memory picks (``--cache_images off``, DataLoader workers) and
  activation checkpointing (XceptionBased): the same arithmetic, so the same numbers bit for bit;
- thread counts (``OMP_NUM_THREADS``), ATen's CPU kernels (``ATEN_CPU_CAPABILITY``) and oneDNN's
  instruction set (``ONEDNN_MAX_CPU_ISA``): other rounding, as on another CPU.

Usage::

    python benchmarks/check_reproducibility.py --data_root data/demo    # SimpleNet, synthetic, 5 epochs
    python benchmarks/check_reproducibility.py --data_root data/demo -d fakes_dataset
    python benchmarks/check_reproducibility.py --data_root data/demo -m XceptionBased -e 2 --variants avx2-cpu

Prints a table (the first epoch's training loss and its relative difference, the largest relative
difference of any logged loss, the best validation accuracy, the test accuracy and test AUC at that
epoch) and writes it to ``--out`` (JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.cli import ArgumentParser, UserError, add_debug_flag, positive_int, run_cli, seed_int
from lib.fileio import atomic_write_json
from lib.names import DATASET_NAMES, MODEL_NAMES

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {
    "reference": ({}, []),
    "cache-off": ({}, ["--cache_images", "off"]),
    "workers-1": ({}, ["--cache_images", "off", "--num_workers", "1"]),
    "checkpointing-on": ({}, ["--activation_checkpointing", "on"]),
    "threads-1": ({"OMP_NUM_THREADS": "1"}, []),
    "aten-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, []),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, []),
    "avx2-cpu": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
}
"""name -> (environment, extra train_main.py flags). "avx2-cpu" runs the CPU kernels an AVX2
machine without AVX-512 would run."""
LOSS_KEYS = ("train_loss", "val_loss", "test_loss")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", required=True, help="the data (for example data/demo)")
    parser.add_argument("-m", "--model", default="SimpleNet", choices=MODEL_NAMES)
    parser.add_argument(
        "-d", "--dataset", default="synthetic_dataset", help=", ".join(DATASET_NAMES) + ", ..."
    )
    parser.add_argument("-e", "--epochs", default=5, type=positive_int)
    parser.add_argument("-b", "--batch_size", default=32, type=positive_int)
    parser.add_argument("--seed", default=0, type=seed_int)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[v for v in VARIANTS if v != "checkpointing-on"],
        choices=list(VARIANTS),
        help="which variants to run besides the reference (checkpointing-on: XceptionBased only)",
    )
    parser.add_argument("--out", default="out/check_reproducibility.json", help="the JSON written")
    parser.add_argument("--smoke", action="store_true", help="1 epoch, the first two variants (for tests)")
    add_debug_flag(parser)
    return parser


def train(args, name: str, work: str) -> dict:
    """The run dict of one variant's training (a ``train_main.py`` subprocess under its settings)."""
    env, flags = VARIANTS[name]
    out = os.path.join(work, name)
    argv = [
        sys.executable, os.path.join(HERE, "train_main.py"),
        "-m", args.model, "-d", args.dataset, "-o", "Adam", "--lr", "0.001",
        "-b", str(args.batch_size), "-e", str(args.epochs), "--seed", str(args.seed),
        "--data_root", args.data_root, "--device", "cpu", "--no_progress", "--no_pretrained",
        "--out_dir", os.path.join(out, "out"), "--checkpoint_dir", os.path.join(out, "ck"), *flags,
    ]  # fmt: skip
    if args.model == "SimpleNet":
        argv.remove("--no_pretrained")
    proc = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"variant {name}: train_main.py failed: {proc.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(out, "out", f"{args.dataset}_{args.model}_Adam.json")) as handle:
        return json.load(handle)[-1]


def compare(run: dict, reference: dict) -> dict:
    """How ``run`` differs from ``reference``: identical losses or not, the largest relative
    difference of a logged loss, and the headline numbers at the best validation epoch."""
    pairs = [(a, b) for key in LOSS_KEYS for a, b in zip(run[key], reference[key])]
    best = run["best_epoch"] - 1
    return {
        "identical": all(run[key] == reference[key] for key in (*LOSS_KEYS, "val_acc", "test_acc")),
        "first_train_loss": run["train_loss"][0],
        "first_train_loss_rel_diff": abs(run["train_loss"][0] - reference["train_loss"][0])
        / abs(reference["train_loss"][0]),
        "max_loss_rel_diff": max(abs(a - b) / abs(b) for a, b in pairs),
        "best_epoch": run["best_epoch"],
        "best_val_acc": run["best_val_acc"],
        "test_acc_at_best": run["test_acc_at_best"],
        "test_auc_at_best": run["test_auc"][best],
    }


def table(rows: dict) -> str:
    """The comparison as a text table."""
    lines = [
        f"{'variant':<18}{'same bits':>10}{'epoch-1 loss':>20}{'rel diff':>10}{'max rel':>10}"
        f"{'best val %':>11}{'test %':>8}{'test AUC':>9}"
    ]
    for name, r in rows.items():
        lines.append(
            f"{name:<18}{'yes' if r['identical'] else 'no':>10}{r['first_train_loss']:>20.16f}"
            f"{r['first_train_loss_rel_diff']:>10.1e}{r['max_loss_rel_diff']:>10.1e}"
            f"{r['best_val_acc']:>11.1f}{r['test_acc_at_best']:>8.1f}{r['test_auc_at_best']:>9.3f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.epochs, args.variants = 1, args.variants[:2]
    names = ["reference", *[v for v in args.variants if v != "reference"]]
    with tempfile.TemporaryDirectory(prefix="reproducibility-") as work:
        runs = {name: train(args, name, work) for name in names}
    rows = {name: compare(run, runs["reference"]) for name, run in runs.items()}
    print(table(rows))
    settings = {k: getattr(args, k) for k in ("model", "dataset", "epochs", "batch_size", "seed")}
    variants = {name: {"env": VARIANTS[name][0], "flags": VARIANTS[name][1]} for name in names}
    atomic_write_json(args.out, {"settings": settings, "variants": variants, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
