"""Cross-dataset generalisation: every trained checkpoint on the test split of every dataset.

- ``CheckpointSpec``, ``parse_checkpoint_spec`` and ``discover_checkpoints``: which checkpoints
  (``D:M:PATH``, or the ``<D>_<M>_<O>.pt`` files train_main.py writes);
- ``evaluate_matrix``: AUC, accuracy, EER and AP of P(fake) for each (checkpoint, test dataset);
  each test split is decoded once and shared by all checkpoints;
- ``plot_matrix`` and ``matrix_table``: the heat maps (train dataset x test dataset, the
  in-distribution cells labelled) and a text table.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

import numpy as np

from lib import scores
from lib.cli import UserError
from lib.metrics import HEADLINE_METRICS, binary_metrics, fmt
from lib.names import MODEL_NAMES, OPTIMIZER_NAMES, RUN_NAME, dataset_title

MATRIX_METRICS = (
    ("auc", "AUC of P(fake)", (0.0, 1.0), "viridis", ".3f"),
    ("accuracy", "accuracy at 0.5 (%)", (0.0, 100.0), "viridis", ".1f"),
    ("eer", "EER", (0.0, 0.5), "viridis_r", ".3f"),
)
_NAME = re.compile(rf"^(.+)_({'|'.join(MODEL_NAMES)})_({'|'.join(OPTIMIZER_NAMES)})(?:_({RUN_NAME}))?\.pt$")
"""train_main.py's best checkpoint: ``<D>_<M>_<O>[_<run name>].pt`` (its ``_last.pt`` is no run name)."""


@dataclass(frozen=True)
class CheckpointSpec:
    dataset: str  # the dataset it was trained on
    model: str
    path: str
    optimizer: str | None = None
    named_by: str = "its file name"  # where dataset and model came from, for error messages
    run_id: str | None = None  # the training run, when the checkpoint records it
    run_name: str | None = None  # train_main.py's --run_name, from the file name or the checkpoint

    @property
    def label(self) -> str:
        opt = f", {self.optimizer}" if self.optimizer else ""
        name = f" {self.run_name}" if self.run_name else ""
        return f"{self.model}{opt}{name}, trained on {self.dataset}"


def _run_name(match: re.Match) -> str | None:
    """The run name in a checkpoint's file name (``_last`` marks the run's full-state checkpoint)."""
    name = match.group(4)
    return None if name in (None, "last") else name.removesuffix("_last")


def parse_checkpoint_spec(text: str) -> CheckpointSpec:
    """``D:M:PATH`` (train dataset, model, checkpoint), or a bare path named ``<D>_<M>_<O>.pt``."""
    parts = text.split(":", 2)
    if len(parts) == 3 and parts[0] and os.sep not in parts[0] and parts[1] in MODEL_NAMES:
        match = _NAME.match(os.path.basename(parts[2]))
        optimizer, run_name = (match.group(3), _run_name(match)) if match else (None, None)
        named_by = f"--checkpoints {text}"
        return CheckpointSpec(parts[0], parts[1], parts[2], optimizer, named_by, run_name=run_name)
    match = _NAME.match(os.path.basename(text))
    if match:
        return CheckpointSpec(match.group(1), match.group(2), text, match.group(3), run_name=_run_name(match))
    raise UserError(
        f"--checkpoints {text!r}: expected DATASET:MODEL:PATH (a dataset folder's name; models: "
        f"{', '.join(MODEL_NAMES)}) or a file named <dataset>_<model>_<optimizer>.pt"
    )


def recorded_names(checkpoint: dict) -> dict:
    """What a checkpoint records about its training (train_main.py's best checkpoints do):
    ``dataset``, ``model`` and ``optimizer`` names, ``run_id`` and ``run_name``, each only when
    present."""
    optimizer = checkpoint.get("optimizer")
    optimizer = optimizer.get("name") if isinstance(optimizer, dict) else optimizer
    found = {
        "dataset": checkpoint.get("dataset"),
        "model": checkpoint.get("model_name"),
        "optimizer": optimizer,
        "run_id": checkpoint.get("run_id"),
        "run_name": checkpoint.get("run_name"),
    }
    return {key: value for key, value in found.items() if isinstance(value, str) and value}


def believe_the_checkpoint(spec: CheckpointSpec, checkpoint: dict) -> CheckpointSpec:
    """``spec`` checked against what ``checkpoint`` records (``recorded_names``): the checkpoint is
    believed, so a spec or file name that says another dataset, model or optimizer is a
    ``UserError`` naming the file and the spec to give instead; nothing is evaluated or written.
    Returns the spec with the recorded optimizer, run id and run name filled in."""
    recorded = recorded_names(checkpoint)
    said = {"dataset": spec.dataset, "model": spec.model, "optimizer": spec.optimizer}
    wrong = [key for key, value in said.items() if value and recorded.get(key, value) != value]
    if wrong:
        dataset, model = recorded.get("dataset", spec.dataset), recorded.get("model", spec.model)
        facts = " and ".join(f"{key} {recorded[key]}" for key in wrong)
        claims = " and ".join(f"{key} {said[key]}" for key in wrong)
        raise UserError(
            f"{spec.path}: the checkpoint records {facts}, but {spec.named_by} says {claims}; "
            f"give it as {dataset}:{model}:{spec.path}"
        )
    return replace(
        spec,
        optimizer=recorded.get("optimizer", spec.optimizer),
        run_id=recorded.get("run_id"),
        run_name=recorded.get("run_name", spec.run_name),
    )


def discover_checkpoints(folder: str) -> list[CheckpointSpec]:
    """The best-validation checkpoints train_main.py wrote into ``folder`` (``<D>_<M>_<O>[_<run
    name>].pt``; not ``_last.pt`` nor ``.run-<id>.pt``), sorted by name. None found is a ``UserError``."""
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    best = [n for n in names if _NAME.match(n) and not n.endswith("_last.pt")]
    found = [parse_checkpoint_spec(os.path.join(folder, n)) for n in best]
    if not found:
        raise UserError(
            f"{folder}: no checkpoints named <dataset>_<model>_<optimizer>.pt; train with "
            "train_main.py, or pass --checkpoint_dir or --checkpoints DATASET:MODEL:PATH"
        )
    return found


def evaluate_matrix(
    specs, models, datasets: dict, batch_size: int = 64, progress: bool = False, num_workers: int = 0
) -> list[dict]:
    """One row per checkpoint (``specs`` and their loaded ``models``): its spec and, per test
    dataset (``datasets``: name -> test split), AUC, accuracy (%), EER, AP of P(fake), the class
    counts and whether it is in-distribution (the dataset it was trained on). ``num_workers``
    worker processes decode the images."""
    rows = []
    for spec, model in zip(specs, models):
        results = {}
        for name, dataset in datasets.items():
            logits, labels = scores.predict_scores(
                model, dataset, batch_size, progress=progress, num_workers=num_workers
            )
            metrics = binary_metrics(labels, scores.soft_scores(logits)[:, 1])
            results[name] = {key: metrics[key] for key in (*HEADLINE_METRICS, "n_real", "n_fake")}
            results[name]["in_distribution"] = name == spec.dataset
        rows.append(
            {
                "label": spec.label,
                "train_dataset": spec.dataset,
                "model": spec.model,
                "optimizer": spec.optimizer,
                "checkpoint": spec.path,
                "run_id": spec.run_id,
                "run_name": spec.run_name,
                "results": results,
            }
        )
    return rows


def matrix_table(rows, test_datasets) -> str:
    """Text table: one line per checkpoint, AUC / accuracy / EER per test dataset, '*' on the
    in-distribution cells."""
    width = max(len(row["label"]) for row in rows)
    head = f"{'checkpoint':<{width}}" + "".join(f"  {name:>22}" for name in test_datasets)
    lines = [head, f"{'':<{width}}" + "".join(f"  {'AUC / acc % / EER':>22}" for _ in test_datasets)]
    for row in rows:
        cells = []
        for name in test_datasets:
            r = row["results"][name]
            auc = fmt(r["auc"], 3)
            eer = fmt(r["eer"], 3)
            mark = "*" if r["in_distribution"] else " "
            cells.append(f"  {mark + auc + ' / ' + fmt(r['accuracy'], 1) + ' / ' + eer:>22}")
        lines.append(f"{row['label']:<{width}}" + "".join(cells))
    lines.append("* in-distribution (the checkpoint's own dataset)")
    return "\n".join(lines)


def plot_matrix(rows, test_datasets):
    """Three heat maps (AUC, accuracy, EER): rows are checkpoints, columns test datasets; each cell
    shows its value, and the cells of a checkpoint's own dataset are framed and labelled
    'in-distribution'."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n_rows, n_cols = len(rows), len(test_datasets)
    fig, axes = plt.subplots(
        1, len(MATRIX_METRICS), figsize=(5.2 * len(MATRIX_METRICS) + 1.5, 1.2 * n_rows + 2.2)
    )
    for ax, (key, title, (low, high), cmap, digits) in zip(np.atleast_1d(axes), MATRIX_METRICS):
        values = np.array(
            [
                [np.nan if row["results"][d][key] is None else row["results"][d][key] for d in test_datasets]
                for row in rows
            ],
            dtype=float,
        )
        shown = ax.imshow(values, cmap=cmap, vmin=low, vmax=high, aspect="auto")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        for i, row in enumerate(rows):
            for j, name in enumerate(test_datasets):
                inside = row["results"][name]["in_distribution"]
                text = "n/a" if np.isnan(values[i, j]) else format(values[i, j], digits)
                ax.text(
                    j,
                    i,
                    text + ("\nin-distribution" if inside else ""),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white",
                    fontweight="bold" if inside else None,
                    bbox={"facecolor": "black", "alpha": 0.35, "linewidth": 0},
                )
                if inside:
                    ax.add_patch(
                        Rectangle(
                            (j - 0.44, i - 0.44), 0.88, 0.88, fill=False, linewidth=2.5, edgecolor="red"
                        )
                    )
        ax.set_xticks(range(n_cols), [dataset_title(d) for d in test_datasets], fontsize=9)
        ax.set_yticks(
            range(n_rows),
            [row["label"].replace(", trained on ", "\ntrained on ") for row in rows],
            fontsize=8,
        )
        ax.set_xlabel("test split of")
        ax.set_title(title)
    fig.suptitle("Cross-dataset evaluation (framed: in-distribution)")
    fig.tight_layout()
    return fig
