"""What the blur and JPEG training augmentation does to robustness (benchmarks/README.md).

For each seed, SimpleNet is trained on fakes_dataset with the study's protocol (Adam, lr 0.001,
batch 32, 5 epochs, --precise_bn 64) twice: as the study trains it, and with CNNDetection's
``--blur_prob 0.5 --jpeg_prob 0.5`` (sigma 0-3, quality 30-100). Each checkpoint goes through
``robustness_analysis.py`` on the whole test split. The table gives, per condition, the clean AUC
and the AUC at the harshest JPEG and blur grades: mean and range over the seeds.

    python make_demo_datasets.py --out data/demo
    python benchmarks/bench_augmentation.py --data_root data/demo --work /tmp/augment

Each run is a train_main.py and a robustness_analysis.py process, their outputs under
``--work/<condition>_s<seed>/``; a run whose robustness section exists is not run again, so an
interrupted benchmark continues where it stopped. The summary is merged into ``--out``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.cli import ArgumentParser, add_debug_flag, positive_int, run_cli, seed_int
from lib.fileio import atomic_write_json, ensure_dir
from lib.names import metrics_json_path, output_stem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONDITIONS = {"study": [], "blur_jpeg": ["--blur_prob", "0.5", "--jpeg_prob", "0.5"]}
PROTOCOL = ["-m", "SimpleNet", "-d", "fakes_dataset", "-o", "Adam", "--lr", "0.001", "--precise_bn", "64"]
COLUMNS = (("clean", None, None), ("JPEG 30", "jpeg", 30), ("blur 3", "blur", 3.0))


def read_json(path: str) -> dict:
    """A JSON object file's content; {} when the file does not exist."""
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def run_one(args, condition: str, seed: int) -> dict:
    """Train and analyse one (condition, seed), unless its robustness section exists; returns it."""
    work = os.path.join(args.work, f"{condition}_s{seed}")
    out, ck, fig = (os.path.join(work, name) for name in ("out", "ck", "fig"))
    metrics = metrics_json_path(out, "fakes_dataset", "SimpleNet")
    if "robustness" not in read_json(metrics):
        common = ["--data_root", args.data_root, "--device", args.device, "--no_progress"]
        train = [*PROTOCOL, *CONDITIONS[condition], "-b", str(args.batch_size), "-e", str(args.epochs)]
        train += ["--seed", str(seed), "--out_dir", out, "--checkpoint_dir", ck, *common]
        checkpoint = os.path.join(ck, output_stem("fakes_dataset", "SimpleNet", "Adam") + ".pt")
        robust = ["-m", "SimpleNet", "-d", "fakes_dataset", "-cpp", checkpoint, "--max_images", "0"]
        robust += ["--perturbations", "jpeg", "blur", "--out_dir", out, "--figures_dir", fig, *common]
        for script, flags in (("train_main.py", train), ("robustness_analysis.py", robust)):
            print(f"{condition}, seed {seed}: {script} {' '.join(flags)}", flush=True)
            subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], check=True)
    return read_json(metrics)["robustness"]


def auc_at(section: dict, perturbation: str | None, severity) -> float:
    """The AUC of P(fake) clean (``perturbation`` None) or at one perturbation's severity."""
    if perturbation is None:
        return section["clean"]["auc"]
    entry = section["perturbations"][perturbation]
    return entry["auc"][entry["severities"].index(severity)]


def summary_table(results: dict) -> str:
    """Markdown: one row per condition, per column the AUC's mean and range over the seeds."""
    head = "| training | " + " | ".join(f"AUC {name}" for name, _, _ in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for condition, per_seed in results.items():
        cells = []
        for name, _, _ in COLUMNS:
            values = [seed_values[name] for seed_values in per_seed.values()]
            mean = sum(values) / len(values)
            cells.append(f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})")
        label = " ".join(CONDITIONS[condition]) or "the study's (no blur, no JPEG)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Robustness of SimpleNet trained with and without blur+JPEG.")
    parser.add_argument("--data_root", required=True, help="data root holding fakes_dataset/ (the demo)")
    parser.add_argument("--work", required=True, help="folder of the runs' outputs (kept, reused)")
    parser.add_argument("--seeds", nargs="+", type=seed_int, default=[0, 1, 2], help="training seeds")
    parser.add_argument("--epochs", "-e", type=positive_int, default=5, help="epochs (the study's: 5)")
    parser.add_argument("--batch_size", "-b", type=positive_int, default=32, help="batch (the study's: 32)")
    parser.add_argument("--device", default="cpu", help="device of every run")
    parser.add_argument(
        "--out", default=os.path.join("out", "bench_augmentation.json"), help="summary JSON (merged)"
    )
    add_debug_flag(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    results = {
        condition: {seed: {} for seed in args.seeds} for condition in CONDITIONS
    }  # condition -> seed -> column -> AUC
    for seed in args.seeds:
        for condition in CONDITIONS:
            section = run_one(args, condition, seed)
            results[condition][seed] = {name: auc_at(section, p, s) for name, p, s in COLUMNS}
    table = summary_table(results)
    print(table)
    ensure_dir(os.path.dirname(os.path.abspath(args.out)))
    previous = read_json(args.out)
    settings = {
        "seeds": args.seeds,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "device": args.device,
    }
    atomic_write_json(
        args.out, {**previous, "augmentation": {"settings": settings, "auc": results, "table": table}}
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
