"""How fast do the saliency maps and the mean Grad-CAM run, against the model's own forward+backward?

For each model (random weights: speed does not depend on them), on the test split of the same data
as ``bench_train.py`` (demo data generated into a temp folder, or ``--data_root``), with the analysis
scripts' batch size (16) and the model as the scripts load it (``utils.load_model_from_checkpoint``:
eval mode, channels-last on CPU/CUDA; the inputs are NCHW as ``normalize_batch`` gives them):

- reference: the model's own forward + backward (parameter gradients, as in training, without the
  optimizer) on random tensors already in memory, batch by batch;
- saliency over the test set: ``class_means.mean_maps_per_class`` with ``saliency.saliency_maps``,
  exactly what saliency_map.py runs for its mean maps (reads and decodes the PNGs, normalises,
  one forward and one backward per batch, per-class sums);
- mean Grad-CAM over the test set: the same with ``gradcam.grad_cam_maps`` (pytorch-grad-cam), as
  grad_cam_analysis.py runs it (without its faithfulness test; ``--faithfulness`` adds that figure);
- the two map functions alone on the in-memory tensors (no data reading), to split the cost.

It prints images/s and the ratios to the reference (target >= 0.8 for saliency and mean Grad-CAM)
and writes them to ``--out`` (default ``out/bench_analysis.json``, one object per model, merged).
Each figure is the best of ``--repeats`` alternating rounds. XceptionBased runs a fixed number of
test images (``--xception_images``; it is slow on a CPU), SimpleNet the whole test split.

Usage::

    python benchmarks/bench_analysis.py             # the figures of benchmarks/README.md
    python benchmarks/bench_analysis.py --smoke     # tiny, seconds (the test suite)
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import bench_train  # shared helpers: data, batches, rounds, RSS, JSON merge
from lib import gradcam
from lib.cli import ArgumentParser, non_negative_int, positive_int, run_cli
from lib.fileio import atomic_torch_save
from utils import get_device, load_dataset, load_model, load_model_from_checkpoint, set_seed

REQUIRED_KEYS = (
    "reference_fwd_bwd_ips",
    "saliency_ips",
    "mean_grad_cam_ips",
    "saliency_ratio",
    "mean_grad_cam_ratio",
    "saliency_maps_only_ips",
    "grad_cam_maps_only_ips",
)
TARGET_RATIO = 0.8


def analysis_model(name: str, args, device: torch.device, workdir: str) -> tuple[torch.nn.Module, bool]:
    """A random-init model exactly as the analysis scripts get it (through a checkpoint file and
    ``utils.load_model_from_checkpoint``), in ``--memory_format``; returns it and whether its
    4-D parameters are channels-last."""
    set_seed(args.seed)
    checkpoint = os.path.join(workdir, f"{name}.pt")
    atomic_torch_save(
        {"model": load_model(name, pretrained=False).state_dict(), "model_name": name}, checkpoint
    )
    model = load_model_from_checkpoint(name, checkpoint, device)
    if args.memory_format != "as_loaded":
        model = model.to(
            memory_format=torch.channels_last
            if args.memory_format == "channels_last"
            else torch.contiguous_format
        )
    channels_last = all(
        p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4
    )
    return model, channels_last


def random_batches(plan: list[int], seed: int, device: torch.device) -> dict:
    """Random images (NCHW, as ``normalize_batch`` gives them) and labels on ``device``, one pair
    per batch size of ``plan``; returns them keyed by batch size."""
    generator = torch.Generator().manual_seed(seed)
    batches = {}
    for size in set(plan):
        images = torch.randn((size, 3, 256, 256), generator=generator).to(device)
        batches[size] = (images, torch.randint(0, 2, (size,), generator=generator).to(device))
    return batches


def analysis_passes(name: str, model, dataset, args, device: torch.device) -> dict:
    """The passes timed for one model, each over ``dataset`` (its images, or as many random
    in-memory tensors): returns them keyed ``reference``, ``saliency``, ``mean_grad_cam``,
    ``saliency_maps_only``, ``grad_cam_maps_only`` (and with --faithfulness
    ``mean_grad_cam_with_faithfulness``), in the order each round runs them."""
    from lib import class_means, faithfulness, saliency

    layer = gradcam.resolve_layer(model, gradcam.target_layer_name(name, args.target_layer))
    plan = bench_train.batch_sizes(len(dataset), args.batch_size)
    batches = random_batches(plan, args.seed, device)

    def reference():
        for size in plan:
            images, labels = batches[size]
            model.zero_grad(set_to_none=True)
            logits = model(images)
            logits.gather(1, labels.view(-1, 1)).sum().backward()
        model.zero_grad(set_to_none=True)

    def saliency_only():
        for size in plan:
            saliency.saliency_maps(model, *batches[size])

    def grad_cam_only():
        for size in plan:
            gradcam.grad_cam_maps(model, layer, *batches[size])

    def saliency_e2e():
        class_means.mean_maps_per_class(
            dataset, lambda x, y: saliency.saliency_maps(model, x, y), args.batch_size, device
        )

    def grad_cam_e2e():
        class_means.mean_maps_per_class(
            dataset, lambda x, y: gradcam.grad_cam_maps(model, layer, x, y), args.batch_size, device
        )

    def grad_cam_faithfulness():
        accumulator = faithfulness.FaithfulnessAccumulator(model, seed=args.seed)
        class_means.mean_maps_per_class(
            dataset,
            lambda x, y: gradcam.grad_cam_maps(model, layer, x, y),
            args.batch_size,
            device,
            on_batch=accumulator,
        )

    passes = {
        "reference": reference,
        "saliency": saliency_e2e,
        "mean_grad_cam": grad_cam_e2e,
        "saliency_maps_only": saliency_only,
        "grad_cam_maps_only": grad_cam_only,
    }
    if args.faithfulness:
        passes["mean_grad_cam_with_faithfulness"] = grad_cam_faithfulness
    return passes


def analysis_figures(best: dict) -> dict:
    """The JSON figures from the best images/s of each pass: images/s and ratios to the
    reference forward+backward; returns them."""
    ref = best["reference"]
    out = {
        "reference_fwd_bwd_ips": ref,
        "saliency_ips": best["saliency"],
        "mean_grad_cam_ips": best["mean_grad_cam"],
        "saliency_ratio": best["saliency"] / ref,
        "mean_grad_cam_ratio": best["mean_grad_cam"] / ref,
        "saliency_maps_only_ips": best["saliency_maps_only"],
        "grad_cam_maps_only_ips": best["grad_cam_maps_only"],
        "saliency_maps_only_ratio": best["saliency_maps_only"] / ref,
        "grad_cam_maps_only_ratio": best["grad_cam_maps_only"] / ref,
    }
    if "mean_grad_cam_with_faithfulness" in best:
        out["mean_grad_cam_with_faithfulness_ips"] = best["mean_grad_cam_with_faithfulness"]
        out["mean_grad_cam_with_faithfulness_ratio"] = best["mean_grad_cam_with_faithfulness"] / ref
    return out


def analysis_config(
    name: str, args, device: torch.device, split_size: int, measured: int, channels_last: bool
) -> dict:
    """The JSON ``config`` of one model's figures: data, batch, layer, layout, statistic and the
    machine; returns it."""
    return {
        "dataset": args.dataset,
        "split": "test",
        "test_split_size": split_size,
        "measured_images": measured,
        "whole_split": measured == split_size,
        "batch_size": args.batch_size,
        "target_layer": gradcam.target_layer_name(name, args.target_layer),
        "device": str(device),
        "model_channels_last": channels_last,
        "memory_format": args.memory_format,
        "repeats": args.repeats,
        "statistic": "best of the repeats",
        "target_ratio": TARGET_RATIO,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def bench_model(name: str, args, root: str, device: torch.device, workdir: str) -> dict:
    """Time the reference, the saliency and the mean Grad-CAM passes for one model on its test
    images; returns its JSON object."""
    gc.collect()
    bench_train.reset_peak_rss()
    n_images = args.xception_images if name == "XceptionBased" else args.simplenet_images
    full = load_dataset(args.dataset, "test", root)
    dataset = bench_train.head(full, n_images)
    model, channels_last = analysis_model(name, args, device, workdir)
    passes = analysis_passes(name, model, dataset, args, device)
    if not args.smoke:  # warm-up: kernels for both batch shapes, the hooks' first use
        for key in ("reference", "saliency_maps_only", "grad_cam_maps_only"):
            passes[key]()
    times = bench_train.run_rounds(
        {k: functools.partial(bench_train.timed, fn, device) for k, fn in passes.items()},
        args.repeats,
        f"{name} rounds",
        args.no_progress,
    )
    out = analysis_figures({k: len(dataset) / max(min(v), 1e-9) for k, v in times.items()})
    out["peak_rss_mb"] = bench_train.peak_rss_mb()
    out["config"] = analysis_config(name, args, device, len(full), len(dataset), channels_last)
    return out


def print_table(results: dict) -> None:
    print(
        f"{'model':14s} {'fwd+bwd':>9s} {'saliency':>9s} {'ratio':>6s} {'Grad-CAM':>9s} {'ratio':>6s} "
        f"{'sal. only':>9s} {'CAM only':>9s}   (images/s; ratio target >= {TARGET_RATIO})"
    )
    for name, r in results.items():
        print(
            f"{name:14s} {r['reference_fwd_bwd_ips']:9.1f} {r['saliency_ips']:9.1f} "
            f"{r['saliency_ratio']:6.3f} {r['mean_grad_cam_ips']:9.1f} {r['mean_grad_cam_ratio']:6.3f} "
            f"{r['saliency_maps_only_ips']:9.1f} {r['grad_cam_maps_only_ips']:9.1f}"
        )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Saliency and mean Grad-CAM throughput over the test split "
        "against the model's own forward+backward; writes "
        "out/bench_analysis.json."
    )
    bench_train.add_shared_flags(
        parser,
        out_name="bench_analysis.json",
        split_help="whose test split is analysed",
        scale_help="fakes_dataset test 150 images",
        smoke_help="demo scale 0.02, batch 2, 2 images per model, 1 round, no warm-up",
    )
    parser.add_argument(
        "--batch_size",
        "-b",
        default=16,
        type=positive_int,
        help="images per forward/backward (16: the analysis scripts' default)",
    )
    parser.add_argument(
        "--simplenet_images",
        default=0,
        type=non_negative_int,
        help="SimpleNet test images per pass (0: the whole test split)",
    )
    parser.add_argument(
        "--xception_images",
        default=32,
        type=non_negative_int,
        help="XceptionBased test images per pass (0: the whole test split)",
    )
    parser.add_argument(
        "--target_layer", help="Grad-CAM layer (default: each model's own; the study's conv3 for its two)"
    )
    parser.add_argument(
        "--memory_format",
        default="as_loaded",
        choices=("as_loaded", "channels_last", "nchw"),
        help="layout of the model: as utils.load_model_from_checkpoint gives it (what the "
        "analysis scripts use), or forced (to measure the lever); inputs stay NCHW",
    )
    parser.add_argument(
        "--faithfulness",
        action="store_true",
        help="also time the mean Grad-CAM with grad_cam_analysis.py's faithfulness test",
    )
    parser.add_argument("--repeats", default=2, type=positive_int, help="rounds; figures are the best round")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = get_device(args.device)
    if args.smoke:
        args.scale = min(args.scale, 0.02)
        args.batch_size = min(args.batch_size, 2)
        args.simplenet_images = args.xception_images = 2
        args.repeats = 1
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_analysis_") as workdir:
        root = bench_train.prepare_data(args, workdir)
        for name in args.models:
            print(f"measuring {name} ...", file=sys.stderr)
            results[name] = bench_model(name, args, root, device, workdir)
            bench_train.write_results(args.out, {name: results[name]})
    print_table(results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
