"""Cross-dataset generalisation: every trained checkpoint on the test split of every dataset.

    python cross_dataset_analysis.py --checkpoint_dir checkpoints
    python cross_dataset_analysis.py --checkpoints fakes_dataset:SimpleNet:my.pt \
        checkpoints/synthetic_dataset_SimpleNet_Adam.pt

Gives a train-dataset x test-dataset matrix of AUC, accuracy and EER (and AP) of P(fake). Writes
figures/cross_dataset.png (heat maps, the in-distribution cells labelled), out/cross_dataset.json
(section "cross_dataset": the whole matrix) and, for each checkpoint, the "cross_dataset" section
of out/<D>_<M>_metrics.json (its row; other sections kept), and prints the table. A checkpoint
that records the dataset and model it was trained on is believed: a spec or file name that says
otherwise stops the script before anything is evaluated or written.
"""

from __future__ import annotations

import sys

from lib import cross_dataset, metrics_json, names
from lib.cli import ArgumentParser, UserError, run_cli
from lib.figure_output import write_figure
from lib.flags import add_figure_flags, add_multi_dataset_flags
from utils import (
    WrongModelError,
    checkpoint_bytes,
    cross_dataset_paths,
    get_device,
    load_checkpoint,
    load_dataset,
    load_model_from_checkpoint,
)

SCORES = "P(fake) = softmax column 1; accuracy at P(fake) > 0.5"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Evaluate every trained checkpoint on the test split of every dataset: a "
        "train-dataset x test-dataset matrix of AUC, accuracy and EER of P(fake), as a "
        "table, heat maps and JSON."
    )
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        default=None,
        metavar="CKPT",
        help="checkpoints as DATASET:MODEL:PATH (the dataset it was trained on), or "
        "paths named <dataset>_<model>_<optimizer>.pt; default: every "
        "<dataset>_<model>_<optimizer>.pt in --checkpoint_dir. What a checkpoint records "
        "(train_main.py's record their dataset, model and optimizer) must agree",
    )
    parser.add_argument(
        "--checkpoint_dir",
        default="checkpoints",
        help="where to find the checkpoints when --checkpoints is not given",
    )
    add_multi_dataset_flags(
        parser,
        "test splits to evaluate on",
        "folder of cross_dataset.json and <D>_<M>_metrics.json (their "
        "'cross_dataset' section is replaced, other sections kept)",
    )
    add_figure_flags(parser)
    return parser


def load_models(specs, device) -> tuple[list, list]:
    """The specs checked against what their checkpoints record (``believe_the_checkpoint``) and
    the model of each, every checkpoint read once, before any image is decoded. A checkpoint
    that holds another model or was trained on another dataset than its spec or file name says
    is a ``UserError`` naming the spec to give instead."""
    checked, models = [], []
    for spec in specs:
        checkpoint = load_checkpoint(spec.path, device, checkpoint_bytes(spec.model))
        spec = cross_dataset.believe_the_checkpoint(spec, checkpoint)
        try:
            models.append(load_model_from_checkpoint(spec.model, spec.path, device, checkpoint))
        except WrongModelError as exc:
            raise UserError(
                f"{spec.path}: holds a {exc.found} model, not {spec.model}; give it as "
                f"{spec.dataset}:{exc.found}:{spec.path}"
            ) from None
        checked.append(spec)
    return checked, models


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = get_device(args.device)
    specs = (
        [cross_dataset.parse_checkpoint_spec(text) for text in args.checkpoints]
        if args.checkpoints
        else cross_dataset.discover_checkpoints(args.checkpoint_dir)
    )
    test_datasets = list(dict.fromkeys(args.datasets))
    specs, models = load_models(specs, device)
    datasets = {}
    for name in test_datasets:
        datasets[name] = load_dataset(name, "test", args.data_root)
        datasets[name].cache_images(progress=not args.no_progress)  # decoded once for every checkpoint
    rows = cross_dataset.evaluate_matrix(
        specs, models, datasets, args.batch_size, not args.no_progress, args.num_workers
    )

    figure, matrix_path = cross_dataset_paths(args.figures_dir, args.out_dir)
    path = write_figure(cross_dataset.plot_matrix(rows, test_datasets), figure, args)

    def section(selected: list[dict]) -> dict:
        return {"scores": SCORES, "split": "test", "test_datasets": test_datasets, "rows": selected}

    metrics_json.update_metrics_json(matrix_path, {"cross_dataset": section(rows)})
    written = [matrix_path]

    def run_of(row: dict) -> tuple:
        return row["train_dataset"], row["model"], row["run_name"]

    for run in dict.fromkeys(map(run_of, rows)):
        run_path = names.metrics_json_path(args.out_dir, *run)
        mine = [row for row in rows if run_of(row) == run]
        metrics_json.update_metrics_json(run_path, {"cross_dataset": section(mine)})
        written.append(run_path)

    print(cross_dataset.matrix_table(rows, test_datasets))
    print(f"wrote {path}\n" + "\n".join(f"wrote {p} (section 'cross_dataset')" for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
