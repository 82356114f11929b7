"""How hard is the demo data? Two numbers per dataset.

1. A logistic regression (standardised features) on 7 global statistics of each image (3 channel
   means, 3 channel standard deviations, variance of the Laplacian of the grey image), trained on
   train (classes weighted, so the 2:1 set cannot hide behind "always real") and scored on test as
   balanced accuracy. Near 50 %: brightness, contrast and sharpness alone do not tell fakes apart
   (the demo generator aims at <= 65 %).
2. SimpleNet trained with the study's protocol (Adam, lr 1e-3, batch 32, cross-entropy, the course's
   torchvision v1 transforms, 5 epochs): test accuracy at the epoch with the best validation accuracy. On
   fakes_dataset the demo aims at 75-95 % (chance, always "real", is 66.7 %).

Usage::

    python benchmarks/check_demo_difficulty.py                      # fresh demo data in a temp folder
    python benchmarks/check_demo_difficulty.py --data_root data/demo --skip_cnn

With ``--data_root`` the datasets found there are reused and missing ones are generated there.
Results repeat for a seed (data generation and torch are seeded). SimpleNet is trained by
``Trainer.run``, whose metrics JSON and checkpoints go to a temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import make_demo_datasets as demo
from faces_dataset import list_images
from lib.cli import ArgumentParser, add_debug_flag, non_negative_int, positive_int, run_cli
from lib.fileio import ensure_dir
from models import SimpleNet
from trainer import LoggingParameters, Trainer, json_safe_optimizer_params
from utils import load_dataset, set_seed


def global_features(split_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of every image of a split folder; label 1 = fake."""
    features, labels = [], []
    for label, class_dir in enumerate(demo.CLASSES):
        folder = os.path.join(split_dir, class_dir)
        for name in list_images(folder):
            with Image.open(os.path.join(folder, name)) as image:
                features.append(demo.global_stats(np.asarray(image.convert("RGB"))))
            labels.append(label)
    return np.array(features), np.array(labels)


def global_stats_accuracy(dataset_dir: str) -> float:
    """Balanced test accuracy (%) of a logistic regression on the global statistics."""
    x_train, y_train = global_features(os.path.join(dataset_dir, "train"))
    x_test, y_test = global_features(os.path.join(dataset_dir, "test"))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))
    classifier.fit(x_train, y_train)
    return 100.0 * balanced_accuracy_score(y_test, classifier.predict(x_test))


def simplenet_accuracy(data_root: str, dataset: str, epochs: int, seed: int, scratch: str) -> dict:
    """Study protocol on the CPU (``Trainer.run``, its JSON and checkpoints under ``scratch``);
    returns the best-validation epoch with its val and test accuracy."""
    set_seed(seed)
    splits = [load_dataset(dataset, part, data_root) for part in demo.SPLITS]
    for split in splits:
        split.cache_images(progress=False)
    model = SimpleNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer = Trainer(
        model,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        32,
        *splits,
        device="cpu",
        num_workers=0,
        seed=seed,
        progress=False,
        out_dir=os.path.join(scratch, "out"),
        checkpoint_dir=os.path.join(scratch, "checkpoints"),
    )
    print(f"{dataset}: training SimpleNet for {epochs} epoch(s) ...", flush=True)
    run = trainer.run(
        epochs,
        LoggingParameters(
            "SimpleNet", dataset, "Adam", json_safe_optimizer_params(optimizer.param_groups[0])
        ),
    )
    return {"epoch": run["best_epoch"], "val_acc": run["best_val_acc"], "test_acc": run["test_acc_at_best"]}


def ensure_data(data_root: str, seed: int) -> None:
    """Generate the datasets missing (or empty) under ``data_root``; keep the others."""
    ensure_dir(data_root)
    present = [d for d in demo.DATASETS if demo.is_non_empty(os.path.join(data_root, d))]
    if present:
        print(f"reusing existing demo data in {data_root}: {', '.join(present)}", flush=True)
    missing = [d for d in demo.DATASETS if d not in present]
    if missing:
        start = time.perf_counter()
        demo.generate(data_root, seed=seed, datasets=missing, force=True)
        print(
            f"generated {', '.join(missing)} in {data_root} (seed {seed}) in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_root",
        default=None,
        help="folder holding (or to receive) the demo datasets; None: a temporary folder",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the data generation and of torch"
    )
    parser.add_argument("--epochs", type=positive_int, default=5, help="SimpleNet epochs (5: the study's)")
    parser.add_argument(
        "--skip_cnn", action="store_true", help="only the logistic regression (seconds, not minutes)"
    )
    add_debug_flag(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="demo_difficulty_") as scratch:
        data_root = args.data_root or scratch
        ensure_data(data_root, args.seed)
        results = {}
        for dataset in demo.DATASETS:
            lr_acc = global_stats_accuracy(os.path.join(data_root, dataset))
            print(
                f"{dataset}: logistic regression on global stats, balanced test accuracy {lr_acc:.1f} %",
                flush=True,
            )
            results[dataset] = (
                lr_acc,
                None
                if args.skip_cnn
                else simplenet_accuracy(
                    data_root, dataset, args.epochs, args.seed, os.path.join(scratch, "training")
                ),
            )
    print(f"\nsummary (seed {args.seed})")
    for dataset, (lr_acc, cnn) in results.items():
        line = f"{dataset:18s} global-stats LR balanced acc {lr_acc:5.1f} %"
        if cnn:
            line += (
                f" | SimpleNet test acc {cnn['test_acc']:5.1f} % at best-val epoch {cnn['epoch']}"
                f" (val {cnn['val_acc']:.1f} %)"
            )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
