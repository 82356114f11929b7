"""make_demo_datasets.py: layout, counts, identities, determinism, refusal and --force, the
statistics matching, the CLI; and a smoke run of benchmarks/check_demo_difficulty.py."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import make_demo_datasets as demo

SCRIPT = Path(demo.__file__)
DIFFICULTY_SCRIPT = SCRIPT.parent / "benchmarks" / "check_demo_difficulty.py"
SCALE = 0.02
REAL_NAME = re.compile(r"id(\d{5})_\d{3}\.png")
SWAP_NAME = re.compile(r"id(\d{5})_from_id(\d{5})_\d{3}\.png")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def identities(name: str, dataset: str, label: str) -> set[int]:
    """The identity numbers a file name encodes (two for a face swap)."""
    if dataset == "fakes_dataset" and label == "fake":
        match = SWAP_NAME.fullmatch(name)
        assert match, f"bad face-swap file name {name}"
        target, source = int(match[1]), int(match[2])
        assert target != source, name
        return {target, source}
    match = REAL_NAME.fullmatch(name)
    assert match, f"bad file name {name} in {dataset}/{label}"
    return {int(match[1])}


@pytest.fixture(scope="module")
def generated(module_tmp):
    """Both datasets at a tiny scale, made with 2 worker processes; (root, returned counts)."""
    root = module_tmp("demo") / "data"
    counts = demo.generate(root, seed=0, scale=SCALE, workers=2, progress=False)
    return root, counts


def test_counts_on_disk_match_plan_and_ratios(generated):
    root, counts = generated
    assert counts == demo.plan_counts(SCALE)
    assert sorted(p.name for p in root.iterdir()) == sorted(demo.DATASETS)
    for dataset in demo.DATASETS:
        for split in demo.SPLITS:
            on_disk = {label: len(list((root / dataset / split / label).iterdir())) for label in demo.CLASSES}
            assert on_disk == counts[dataset][split]
            assert min(on_disk.values()) >= 1
            if dataset == "fakes_dataset":
                assert on_disk["real"] == 2 * on_disk["fake"]
            else:
                assert abs(on_disk["real"] - on_disk["fake"]) <= 1


@pytest.mark.parametrize("scale", [0.001, 0.02, 0.37, 1.0, 2.5])
def test_class_counts_keep_ratios_at_any_scale(scale):
    for split in demo.SPLITS:
        fakes = demo.class_counts("fakes_dataset", split, scale)
        assert fakes["real"] == 2 * fakes["fake"] >= 2
        assert fakes["fake"] == max(1, round(demo.DEFAULT_COUNTS["fakes_dataset"][split] / 3 * scale))
        synthetic = demo.class_counts("synthetic_dataset", split, scale)
        assert min(synthetic.values()) >= 1
        assert abs(synthetic["real"] - synthetic["fake"]) <= max(1, 0.01 * sum(synthetic.values()))


def test_default_and_full_counts_are_the_documented_ones():
    assert {s: sum(demo.class_counts(d, s).values()) for d in demo.DATASETS for s in demo.SPLITS} == {
        s: demo.DEFAULT_COUNTS[d][s] for d in demo.DATASETS for s in demo.SPLITS
    }
    full = demo.plan_counts(full_size=True)
    assert full["fakes_dataset"] == {
        "train": {"real": 7200, "fake": 3600},
        "val": {"real": 1400, "fake": 700},
        "test": {"real": 1400, "fake": 700},
    }
    assert full["synthetic_dataset"] == {
        "train": {"real": 4721, "fake": 4725},
        "val": {"real": 586, "fake": 585},
        "test": {"real": 551, "fake": 552},
    }


def test_images_are_256x256_rgb_png(generated):
    root, _ = generated
    files = list(root.rglob("*.png"))
    assert files
    for path in files:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (256, 256)), path


def test_identities_never_shared_between_splits(generated):
    root, _ = generated
    for dataset in demo.DATASETS:
        per_split = {}
        for split in demo.SPLITS:
            ids = set()
            for label in demo.CLASSES:
                for path in (root / dataset / split / label).iterdir():
                    ids |= identities(path.name, dataset, label)
            per_split[split] = ids
        assert per_split["train"] and per_split["val"] and per_split["test"]
        assert not per_split["train"] & per_split["val"]
        assert not per_split["train"] & per_split["test"]
        assert not per_split["val"] & per_split["test"]


def test_same_seed_gives_identical_bytes_whatever_the_workers(generated, tmp_path):
    root, _ = generated
    again = tmp_path / "again"
    demo.generate(again, seed=0, scale=SCALE, workers=1, progress=False)
    assert tree(again) == tree(root)


# What another x86-64 CPU would run: numpy's baseline SIMD code instead of its AVX2/AVX-512 versions,
# and OpenBLAS's oldest kernels. Both only take effect when set before numpy is imported.
OTHER_CPU_ENV = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": "Prescott",
}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="emulates other x86-64 CPUs")
def test_the_same_images_on_every_cpu(generated, tmp_path):
    """The same seed gives the same bytes on a CPU with other SIMD instructions or BLAS kernels:
    the study's numbers on the demo data must not depend on which machine generated it."""
    root, _ = generated
    other = tmp_path / "other_cpu"
    argv = [sys.executable, str(SCRIPT), "--out", str(other), "--scale", str(SCALE), "--workers", "2"]
    proc = subprocess.run(
        argv, env={**os.environ, **OTHER_CPU_ENV}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    mine, theirs = tree(root), tree(other)
    assert mine.keys() == theirs.keys()
    assert [name for name in mine if mine[name] != theirs[name]] == []


def test_other_seed_gives_other_images(generated, tmp_path):
    root, _ = generated
    other = tmp_path / "other"
    demo.generate(other, seed=1, scale=SCALE, workers=1, progress=False, datasets=["synthetic_dataset"])
    first, second = tree(root / "synthetic_dataset"), tree(other / "synthetic_dataset")
    assert first.keys() == second.keys()  # synthetic names depend on the counts only
    assert all(first[name] != second[name] for name in first)


def _scene(seed: int, noise: float, blur: float, gain: float, offset: float) -> np.ndarray:
    """A 256x256 float test picture: gradients and a pattern, detail blurred by ``blur`` pixels,
    contrast ``gain``, brightness ``offset`` and sensor noise ``noise``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256].astype(np.float32)
    base = np.stack([80 + 0.3 * x, 100 + 0.25 * y, 90 + 30 * np.sin(x / 9) * np.cos(y / 13)], -1)
    base = ndimage.gaussian_filter(base + rng.normal(0, 12, base.shape), (blur, blur, 0))
    image = offset + gain * (base - 128) + 128 + rng.normal(0, noise, base.shape)
    return np.clip(image, 0, 255).astype(np.float32)


def test_generator_with_bilinear_kernels_gives_back_the_image():
    """Every level's detail is re-added in full: only the kernels can change the image."""
    image = _scene(4, noise=6.0, blur=0.5, gain=1.0, offset=0)
    bilinear = np.broadcast_to(demo.BILINEAR_KERNEL[None, :, :, None], (demo.GAN_LEVELS, 4, 4, 3))
    np.testing.assert_allclose(demo.rebuild_through_generator(image, bilinear), image, atol=1e-3)


def test_generator_kernels_leave_a_checkerboard_of_period_8():
    """A flat image through the seed's kernels: a pattern repeating every 2**3 pixels, with power
    at Nyquist (numpy's FFT as the reference) and the mean kept."""
    kernels = demo.generator_quirks(0)[0]
    out = demo.rebuild_through_generator(np.full((256, 256, 3), 128, np.float32), kernels)
    inner = out[16:-16, 16:-16]  # edge padding disturbs the border
    np.testing.assert_allclose(inner, np.roll(inner, 8, axis=0), atol=1e-3)
    np.testing.assert_allclose(inner, np.roll(inner, 8, axis=1), atol=1e-3)
    assert inner.std() > 0.1 and abs(inner.mean() - 128) < 1
    grey = inner[:192, :192].mean(-1) - inner[:192, :192].mean()  # whole periods only
    power = np.abs(np.fft.fft2(grey)) ** 2
    assert power[96, 0] > 1e-3 * power.sum() and power[0, 96] > 1e-3 * power.sum()


_Y, _X = np.mgrid[0:256, 0:256].astype(np.float32)
OUTSIDE_A_FACE = np.clip((np.hypot(_X - 128, _Y - 128) - 60) / 20, 0, 1)  # 0 inside a disc, 1 outside


@pytest.mark.parametrize(
    "image, noise_where",
    [
        (_scene(2, noise=1.0, blur=1.3, gain=0.8, offset=-15), None),  # smoother: noise added
        (_scene(2, noise=1.0, blur=1.3, gain=0.8, offset=-15), OUTSIDE_A_FACE),  # ... only outside the face
        (_scene(3, noise=4.0, blur=1.0, gain=1.2, offset=12), None),  # sharper: blurred
    ],
    ids=["sharpen", "sharpen-outside-face", "blur"],
)
def test_match_global_stats_gives_the_references_statistics(image, noise_where):
    """Channel means and stds within 0.01 (exact up to float rounding and clipping), Laplacian
    variance within 5 % (at most 3.5 % measured; a no-op misses by 15 grey levels and 50-90 %)."""
    reference = _scene(1, noise=3.0, blur=1.0, gain=1.0, offset=0)
    target = demo.global_stats(reference)
    before = demo.global_stats(image)
    assert np.abs(before[:6] - target[:6]).max() > 10 and abs(before[6] / target[6] - 1) > 0.5  # a real task
    for seed in range(3):
        out = demo.match_global_stats(image, reference, np.random.default_rng(seed), noise_where)
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255
        stats = demo.global_stats(out)
        np.testing.assert_allclose(stats[:6], target[:6], atol=0.01)
        assert stats[6] == pytest.approx(target[6], rel=0.05)
        if noise_where is not None:  # where the weight is 0 only the affine colour change happened
            inside = noise_where == 0
            for c in range(3):
                slope, intercept = np.polyfit(image[inside][:, c], out[inside][:, c], 1)
                residual = out[inside][:, c] - (slope * image[inside][:, c] + intercept)
                assert np.abs(residual).max() < 0.01


def test_global_stats_are_channel_means_stds_and_laplacian_variance():
    image = np.asarray(_scene(4, noise=2.0, blur=0.5, gain=1.0, offset=0)).round().astype(np.uint8)
    pixels = image.reshape(-1, 3).astype(np.float64)
    expected = np.concatenate(
        [
            pixels.mean(0),
            pixels.std(0),
            [ndimage.laplace(image.astype(np.float64) @ [0.299, 0.587, 0.114]).var()],
        ]
    )
    np.testing.assert_allclose(demo.global_stats(image), expected, rtol=1e-4)


def test_non_empty_target_is_refused_and_kept(tmp_path):
    keep = tmp_path / "fakes_dataset" / "mine.txt"
    keep.parent.mkdir()
    keep.write_text("precious")
    with pytest.raises(demo.TargetExistsError, match="--force") as error:
        demo.generate(tmp_path, scale=SCALE, workers=1, progress=False)
    assert str(tmp_path / "fakes_dataset") in str(error.value)
    assert keep.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakes_dataset"]  # nothing else written


def test_cli_refusal_is_one_line_with_exit_code_2(tmp_path):
    keep = tmp_path / "synthetic_dataset" / "mine.png"
    keep.parent.mkdir()
    keep.write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--scale", str(SCALE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(tmp_path / "synthetic_dataset") in lines[0] and "--force" in lines[0]
    assert keep.read_bytes() == b"x"
    assert not (tmp_path / "fakes_dataset").exists()


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--out", "{file}"], ["--out", "{file}", "a file is in the way"]),
        (["--out", "{file}/sub"], ["--out", "{file}/sub", "a file is in the way"]),
        (["--out", "{dir}", "--scale", "1e308"], ["--scale", "1e+308", "1,000,000"]),
    ],
    ids=["out-is-a-file", "out-under-a-file", "absurd-scale"],
)
def test_cli_bad_input_is_one_line_with_exit_code_2(tmp_path, argv, names, capsys, monkeypatch):
    """In this process, as ``__main__`` runs it (the refusal test above runs the script itself)."""
    from lib.cli import run_cli

    file = tmp_path / "a_file"
    file.write_text("mine")
    fill = {"file": str(file), "dir": str(tmp_path / "data")}
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])  # run_cli names the script from argv[0]
    assert run_cli(demo.main, [a.format(**fill) for a in argv]) == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("make_demo_datasets.py: error: ")
    for name in names:
        assert name.format(**fill) in lines[0]
    assert file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written


def test_a_dataset_named_twice_is_made_once(tmp_path):
    counts = demo.generate(
        tmp_path, scale=SCALE, workers=1, progress=False, datasets=["fakes_dataset", "fakes_dataset"]
    )
    assert list(counts) == ["fakes_dataset"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakes_dataset"]  # no .partial-* folder left
    assert len(list((tmp_path / "fakes_dataset").rglob("*.png"))) == sum(
        n for split in counts["fakes_dataset"].values() for n in split.values()
    )


def test_force_replaces_only_the_generated_datasets(generated, tmp_path):
    root, _ = generated
    shutil.copytree(root / "fakes_dataset", tmp_path / "fakes_dataset")
    before = tree(tmp_path / "fakes_dataset")
    assert demo.MARKER in before  # the generator marks what it makes
    other = tmp_path / "notes" / "keep.txt"
    other.parent.mkdir()
    other.write_text("mine")
    counts = demo.generate(
        tmp_path, scale=SCALE, workers=1, progress=False, force=True, datasets=["fakes_dataset"], seed=1
    )
    after = tree(tmp_path / "fakes_dataset")
    assert after != before and demo.MARKER in after
    assert other.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakes_dataset", "notes"]  # no temp folder left
    assert len(list((tmp_path / "fakes_dataset").rglob("*.png"))) == sum(
        n for split in counts["fakes_dataset"].values() for n in split.values()
    )


@pytest.mark.parametrize(
    "plant",
    [
        "fakes_dataset/train/real/photo_0001.jpg",  # real data beside generated images
        "fakes_dataset/NOTES.md",  # the user's notes
        "fakes_dataset/train/real/id00000_000.png.orig",
        "synthetic_dataset/train/fake/id00099_000.png",  # not among what the marker lists
    ],
)
def test_force_refuses_a_folder_holding_what_it_did_not_make(plant, generated, tmp_path, capsys, monkeypatch):
    from lib.cli import run_cli

    root, _ = generated
    for dataset in demo.DATASETS:
        shutil.copytree(root / dataset, tmp_path / dataset)
    (tmp_path / plant).write_bytes(b"the user's")
    before = tree(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    argv = ["--out", str(tmp_path), "--scale", str(SCALE), "--force", "--workers", "1"]
    assert run_cli(demo.main, argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    folder = tmp_path / plant.split("/")[0]
    assert line.startswith(f"make_demo_datasets.py: error: {folder}: --force replaces only what")
    assert f"{tmp_path / plant} is not that" in line
    assert tree(tmp_path) == before  # nothing removed, nothing written


def test_force_refuses_real_data_without_a_marker(tmp_path):
    """A dataset folder this script did not make (no marker, other names) is never replaced; a
    folder made before markers existed holds only generated names and is replaced."""
    real = tmp_path / "fakes_dataset" / "train" / "real" / "00001.png"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a real photo")
    with pytest.raises(demo.TargetExistsError, match=r"00001\.png is not that"):
        demo.generate(
            tmp_path, scale=SCALE, workers=1, progress=False, force=True, datasets=["fakes_dataset"]
        )
    assert real.read_bytes() == b"a real photo"
    real.rename(real.with_name("id00000_000.png"))
    demo.generate(tmp_path, scale=SCALE, workers=1, progress=False, force=True, datasets=["fakes_dataset"])
    assert (tmp_path / "fakes_dataset" / demo.MARKER).is_file()


def test_a_crash_leaves_the_old_data_and_no_partial_tree(generated, tmp_path, monkeypatch):
    shutil.copytree(generated[0] / "fakes_dataset", tmp_path / "fakes_dataset")
    old = tree(tmp_path / "fakes_dataset")
    written, write_image = [], demo.write_image

    def write_then_fail(task):
        if written:
            raise RuntimeError("disk full")
        write_image(task)
        written.append(task)

    monkeypatch.setattr(demo, "_run", functools.partial(demo._run, work=write_then_fail))
    with pytest.raises(RuntimeError, match="disk full"):
        demo.generate(tmp_path, scale=SCALE, workers=1, progress=False, force=True)
    assert written  # the failure came after some images were written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakes_dataset"]
    assert tree(tmp_path / "fakes_dataset") == old


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        demo.generate(tmp_path, datasets=["celeba"], progress=False)
    with pytest.raises(ValueError, match="scale"):
        demo.generate(tmp_path, scale=0, progress=False)
    assert not any(tmp_path.iterdir())


def test_cli_help_explains_every_flag():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == 0
    options = result.stdout.split("options:", 1)[1].split("\n\n", 1)[0]  # up to the epilog
    helps = {
        block.split()[0].rstrip(","): " ".join(block.split())
        for block in re.split(r"\n(?=  -)", options)
        if block.strip()
    }
    for flag in ("--out", "--seed", "--scale", "--full_size", "--force", "--workers", "--datasets"):
        assert flag in helps
        # cli.ArgumentParser appends "(default: ...)": a help text must not say it again
        assert len(re.findall(r"\bdefault\b", helps[flag], re.I)) <= 1, helps[flag]
    assert "(default" not in helps["--out"]  # required: no default
    assert "(default: 0)" in helps["--seed"] and "(default: 1.0)" in helps["--scale"]
    assert "CPU" in helps["--workers"]  # what its default None means
    assert "fakes_dataset" in result.stdout and "synthetic_dataset" in result.stdout
    assert "--full-size" not in result.stdout  # the old spelling works but is not advertised


@pytest.mark.parametrize(
    "argv, full_size",
    [([], False), (["--full_size"], True), (["--full-size"], True)],
    ids=["default", "full_size", "old spelling full-size"],
)
def test_full_size_flag_in_both_spellings(argv, full_size, tmp_path, monkeypatch, capsys):
    """--full_size, and its old spelling --full-size, reach generate() as full_size=True."""
    calls = []
    monkeypatch.setattr(demo, "generate", lambda out, **kwargs: calls.append(kwargs) or {})
    assert demo.main(["--out", str(tmp_path), *argv]) == 0
    assert [call["full_size"] for call in calls] == [full_size]


def _load_difficulty_script():
    spec = importlib.util.spec_from_file_location("check_demo_difficulty", DIFFICULTY_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_torch_threads():
    """check_demo_difficulty.main sets torch's thread count; restore it for the other tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _whole_line(out: str, pattern: str) -> re.Match | None:
    """The match of ``pattern`` against a whole line of ``out``; None when no line matches."""
    return re.search(rf"^{pattern}$", out, re.M)


def test_check_demo_difficulty_skip_cnn_reuses_the_data_and_reports(generated, capsys, keep_torch_threads):
    root, _ = generated
    before = tree(root)
    script = _load_difficulty_script()
    assert script.main(["--data_root", str(root), "--skip_cnn"]) == 0
    out = capsys.readouterr().out
    assert f"reusing existing demo data in {root}" in out
    assert "generated" not in out and "SimpleNet" not in out
    for dataset in demo.DATASETS:
        reported = _whole_line(
            out, rf"{dataset}: logistic regression on global stats, balanced test accuracy ([\d.]+) %"
        )
        summary = _whole_line(out, rf"{dataset} +global-stats LR balanced acc +([\d.]+) %")
        assert reported and summary, out
        assert 0 <= float(reported[1]) <= 100 and float(summary[1]) == round(float(reported[1]), 1)
    assert tree(root) == before  # reused, not regenerated


def test_check_demo_difficulty_trains_with_trainer_run(generated, capsys, keep_torch_threads):
    root, _ = generated
    script = _load_difficulty_script()
    assert script.main(["--data_root", str(root), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    for dataset in demo.DATASETS:
        line = _whole_line(
            out,
            rf"{dataset} +global-stats LR .* \| SimpleNet test acc +([\d.]+) % at best-val "
            rf"epoch 1 \(val ([\d.]+) %\)",
        )
        assert line, out
        assert 0 <= float(line[1]) <= 100 and 0 <= float(line[2]) <= 100
