"""make_demo_datasets.py: layout, counts, identities, determinism, refusal and --force, the CLI."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import make_demo_datasets as demo

SCRIPT = Path(demo.__file__)
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
    assert {s: sum(demo.class_counts(d, s).values()) for d in demo.DATASETS for s in demo.SPLITS} == \
        {s: demo.DEFAULT_COUNTS[d][s] for d in demo.DATASETS for s in demo.SPLITS}
    full = demo.plan_counts(full_size=True)
    assert full["fakes_dataset"] == {"train": {"real": 7200, "fake": 3600},
                                     "val": {"real": 1400, "fake": 700},
                                     "test": {"real": 1400, "fake": 700}}
    assert full["synthetic_dataset"] == {"train": {"real": 4721, "fake": 4725},
                                         "val": {"real": 586, "fake": 585},
                                         "test": {"real": 551, "fake": 552}}


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


def test_other_seed_gives_other_images(generated, tmp_path):
    root, _ = generated
    other = tmp_path / "other"
    demo.generate(other, seed=1, scale=SCALE, workers=1, progress=False, datasets=["synthetic_dataset"])
    first, second = tree(root / "synthetic_dataset"), tree(other / "synthetic_dataset")
    assert first.keys() == second.keys()  # synthetic names depend on the counts only
    assert all(first[name] != second[name] for name in first)


def test_fakes_differ_from_their_real_frames(generated):
    """A face swap changes the picture: no fake is a byte copy of a real image."""
    root, _ = generated
    split = root / "fakes_dataset" / "train"
    real = {p.read_bytes() for p in (split / "real").iterdir()}
    assert not real & {p.read_bytes() for p in (split / "fake").iterdir()}


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
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--scale", str(SCALE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(tmp_path / "synthetic_dataset") in lines[0] and "--force" in lines[0]
    assert keep.read_bytes() == b"x"
    assert not (tmp_path / "fakes_dataset").exists()


def test_force_replaces_only_the_generated_datasets(tmp_path):
    stale = tmp_path / "fakes_dataset" / "train" / "real" / "stale.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    other = tmp_path / "notes" / "keep.txt"
    other.parent.mkdir()
    other.write_text("mine")
    counts = demo.generate(tmp_path, scale=SCALE, workers=1, progress=False, force=True,
                           datasets=["fakes_dataset"])
    assert not stale.exists()
    assert other.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakes_dataset", "notes"]  # no temp folder left
    assert len(list((tmp_path / "fakes_dataset").rglob("*.png"))) == \
        sum(n for split in counts["fakes_dataset"].values() for n in split.values())


def test_a_crash_leaves_the_old_data_and_no_partial_tree(tmp_path, monkeypatch):
    old = tmp_path / "fakes_dataset" / "train" / "real" / "old.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    written, write_image = [], demo.write_image

    def write_then_fail(task):
        if written:
            raise RuntimeError("disk full")
        write_image(task)
        written.append(task)

    monkeypatch.setattr(demo, "write_image", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.generate(tmp_path, scale=SCALE, workers=1, progress=False, force=True)
    assert written  # the failure came after some images were written
    assert old.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakes_dataset"]
    assert tree(tmp_path / "fakes_dataset") == {os.path.join("train", "real", "old.png"): b"old"}


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        demo.generate(tmp_path, datasets=["celeba"], progress=False)
    with pytest.raises(ValueError, match="scale"):
        demo.generate(tmp_path, scale=0, progress=False)
    assert not any(tmp_path.iterdir())


def test_cli_help_explains_every_flag():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for flag in ("--out", "--seed", "--scale", "--full-size", "--force", "--workers", "--datasets"):
        assert flag in result.stdout
    assert "fakes_dataset" in result.stdout and "synthetic_dataset" in result.stdout
