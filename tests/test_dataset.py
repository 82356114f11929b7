"""FacesDataset indexing, labels, file handling; transforms; data-root resolution; load_model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import utils
from conftest import ROOT
from faces_dataset import DataError, FacesDataset, list_images, read_rgb_image
from lib import cli, transforms


def _write_mixed_split(root: str) -> dict:
    """A split whose files cover every mode and every kind of clutter; returns expectations."""
    real, fake = os.path.join(root, "real"), os.path.join(root, "fake")
    os.makedirs(real)
    os.makedirs(fake)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(os.path.join(real, "b_rgb.png"))
    Image.fromarray(rgb[..., 0], "L").save(os.path.join(real, "a_gray.png"))
    rgba = np.dstack([rgb, np.full((256, 256), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(os.path.join(real, "c_rgba.png"))
    Image.fromarray(rgb, "RGB").convert("CMYK").save(os.path.join(fake, "a_cmyk.jpg"))
    sixteen = rgb[..., 1].astype(np.uint16) * 257
    Image.fromarray(sixteen).save(os.path.join(fake, "b_16bit.png"))
    Image.fromarray(rgb, "RGB").convert("P").save(os.path.join(fake, "c_palette.png"))
    with open(os.path.join(fake, "d_corrupt.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\nthis is not really a png")
    for clutter in (
        os.path.join(real, ".DS_Store"),
        os.path.join(fake, "Thumbs.db"),
        os.path.join(real, "notes.txt"),
    ):
        with open(clutter, "wb") as handle:
            handle.write(b"junk")
    os.makedirs(os.path.join(real, "subfolder"))
    return {
        "real": ["a_gray.png", "b_rgb.png", "c_rgba.png"],
        "fake": ["a_cmyk.jpg", "b_16bit.png", "c_palette.png", "d_corrupt.png"],
        "rgb": rgb,
    }


@pytest.fixture()
def mixed_split(tmp_path):
    expected = _write_mixed_split(str(tmp_path))
    return str(tmp_path), expected


def test_lists_sorted_images_and_ignores_clutter(mixed_split):
    root, expected = mixed_split
    dataset = FacesDataset(root)
    assert dataset.real_image_names == expected["real"]
    assert dataset.fake_image_names == expected["fake"]
    assert len(dataset) == 7


def test_indexing_real_first_then_fake(mixed_split):
    root, expected = mixed_split
    dataset = FacesDataset(root)
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    for index in range(len(dataset)):
        path, label = dataset.path_and_label(index)
        names = expected["real"] if index < 3 else expected["fake"]
        assert os.path.basename(path) == names[index if index < 3 else index - 3]
        assert label == (0 if index < 3 else 1)
    assert dataset.path_and_label(-1)[0].endswith("d_corrupt.png")
    with pytest.raises(IndexError):
        dataset.path_and_label(7)


@pytest.mark.parametrize("index", range(6))
def test_every_mode_becomes_rgb_uint8(mixed_split, index):
    root, _ = mixed_split
    image, label = FacesDataset(root)[index]
    assert image.dtype == torch.uint8 and image.shape == (3, 256, 256)
    assert label == (0 if index < 3 else 1)


def test_mode_conversions_keep_content(mixed_split):
    root, expected = mixed_split
    rgb = expected["rgb"]
    dataset = FacesDataset(root)
    gray = dataset.load_uint8(0)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], torch.from_numpy(rgb[..., 0]))
    assert torch.equal(dataset.load_uint8(1), torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal(dataset.load_uint8(2), torch.from_numpy(rgb).permute(2, 0, 1))  # alpha dropped
    sixteen = dataset.load_uint8(4)  # 16-bit scaled to 8-bit, not clipped to white
    assert torch.equal(sixteen[0], torch.from_numpy(rgb[..., 1]))


def test_corrupt_image_error_names_file(mixed_split):
    root, _ = mixed_split
    with pytest.raises(DataError, match=r"d_corrupt\.png"):
        FacesDataset(root)[6]


def test_skip_corrupt_drops_with_warning(mixed_split):
    root, _ = mixed_split
    with pytest.warns(UserWarning, match="d_corrupt.png"):
        dataset = FacesDataset(root, skip_corrupt=True)
    assert "d_corrupt.png" not in dataset.fake_image_names and len(dataset) == 6


def test_missing_class_folder_error(tmp_path):
    os.makedirs(tmp_path / "real")
    with pytest.raises(DataError, match="fake") as info:
        FacesDataset(str(tmp_path))
    assert "make_demo_datasets.py" in str(info.value)


def test_cache_gives_identical_items(tiny_root):
    plain = utils.load_dataset("fakes_dataset", "test", tiny_root)
    cached = utils.load_dataset("fakes_dataset", "test", tiny_root, cache_images=True)
    assert cached.cached and not plain.cached
    for index in range(len(plain)):
        a, la = plain[index]
        b, lb = cached[index]
        assert la == lb and torch.equal(a, b)


# ----------------------------------------------------------------------------- transforms
COURSE_TRAIN = T.Compose(
    [
        T.RandomCrop(256, padding=4),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(transforms.NORMALIZE_MEAN, transforms.NORMALIZE_STD),
    ]
)
COURSE_TEST = T.Compose([T.ToTensor(), T.Normalize(transforms.NORMALIZE_MEAN, transforms.NORMALIZE_STD)])


def _pil(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB")


def test_test_transform_equals_course_transform():
    image = _pil()
    ours = utils.get_transforms("test")(torch.from_numpy(np.array(image)).permute(2, 0, 1))
    assert ours.dtype == torch.float32 and ours.shape == (3, 256, 256)
    torch.testing.assert_close(ours, COURSE_TEST(image), rtol=0, atol=1e-6)
    mean = torch.tensor(transforms.NORMALIZE_MEAN).view(3, 1, 1)
    std = torch.tensor(transforms.NORMALIZE_STD).view(3, 1, 1)
    torch.testing.assert_close(ours * std + mean, T.ToTensor()(image), rtol=0, atol=1e-6)


def test_train_transform_is_a_padded_crop_and_flip_of_the_course_one():
    """Every output equals the course test transform of some zero-padded 256 crop, maybe flipped."""
    image = _pil(1)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    padded = torch.nn.functional.pad(tensor, (4, 4, 4, 4))
    crops = torch.stack(
        [padded[:, top : top + 256, left : left + 256] for top in range(9) for left in range(9)]
    )
    candidates = torch.cat([crops, crops.flip(-1)])  # 162 uint8 candidates
    # normalize_batch equals the course test transform (test_normalize_batch_equals_test_transform)
    normalized = transforms.normalize_batch(candidates)
    torch.manual_seed(0)
    seen = set()
    for _ in range(8):
        out = utils.get_transforms("train")(tensor)
        assert out.shape == (3, 256, 256) and out.dtype == torch.float32
        distance = (normalized - out).abs().flatten(1).amax(1)
        matches = distance.le(1e-5).nonzero().flatten()
        assert len(matches) >= 1
        seen.add(int(matches[0]))
    assert len(seen) > 1  # the crops really are random


def test_batched_augment_matches_pad_crop_flip():
    images = torch.randint(0, 256, (6, 3, 256, 256), dtype=torch.uint8)
    params = torch.tensor([[0, 0, 0], [8, 8, 1], [4, 4, 0], [0, 8, 1], [8, 0, 0], [3, 5, 1]])
    out = utils.get_transforms("train").batched().augment(images, params.double())
    for k, (top, left, flip) in enumerate(params.tolist()):
        padded = torch.nn.functional.pad(images[k], (4, 4, 4, 4))
        expect = padded[:, top : top + 256, left : left + 256]
        expect = expect.flip(-1) if flip else expect
        assert torch.equal(out[k], expect)


def test_batched_form_equals_the_per_image_steps_pixel_for_pixel():
    """The train transform's batched form, with the parameters it draws, gives what its own
    torchvision steps give image by image with those parameters: the same uint8 pixels after pad,
    crop and flip, and the same floats after ToDtype and Normalize."""
    transform = utils.get_transforms("train")
    to_image, crop, flip, to_float, normalize = transform.transforms
    batched = transform.batched()
    images = torch.randint(
        0, 256, (24, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    params = batched.draw(len(images), torch.Generator().manual_seed(2))
    augmented = batched.augment(images, params)
    ours = batched.normalize(augmented)
    for k, (top, left, mirrored) in enumerate(params.long().tolist()):
        image = TF.pad(to_image(images[k]), crop.padding, fill=crop.fill, padding_mode=crop.padding_mode)
        image = TF.crop(image, top, left, *crop.size)
        image = TF.horizontal_flip(image) if mirrored else image
        assert torch.equal(augmented[k], image)
        torch.testing.assert_close(ours[k], normalize(to_float(image)), rtol=0, atol=1e-6)
    offsets, flips = params[:, :2], params[:, 2]
    assert offsets.min() >= 0 and offsets.max() <= 2 * crop.padding[0] and 0 < flips.sum() < len(images)
    assert flip.p == 0.5 and not utils.get_transforms("test").batched().random


@pytest.mark.parametrize("where", [0, 1, 3, 4, 5])
def test_a_step_without_batched_twin_is_refused(where):
    """ColorJitter added to the study transform (first, before the crop, before ToDtype, between ToDtype
    and Normalize, after Normalize) would be left out of training: it is refused, named."""
    transform = utils.get_transforms("train")
    transform.transforms.insert(where, v2.ColorJitter(brightness=0.5))
    with pytest.raises(
        cli.UserError, match=r"StudyTransform: ColorJitter.* has no batched uint8 twin"
    ) as info:
        transform.batched()
    assert "\n" not in str(info.value) and "v2.Compose" in str(info.value)
    crop = utils.get_transforms("train")
    crop.transforms[1] = v2.RandomCrop(256, padding=4, padding_mode="reflect")
    with pytest.raises(cli.UserError, match=r"RandomCrop.*only RandomCrop"):
        crop.batched()


def test_normalize_batch_equals_test_transform():
    images = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    transform = utils.get_transforms("val")
    expect = torch.stack([transform(image) for image in images])
    torch.testing.assert_close(transforms.normalize_batch(images), expect, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        transforms.denormalize(transforms.normalize_batch(images)), images / 255.0, rtol=0, atol=1e-6
    )


# ----------------------------------------------------------------------------- data root, names
def test_data_root_resolution_order(tmp_path, monkeypatch):
    flag, env = tmp_path / "flag", tmp_path / "env"
    flag.mkdir()
    env.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(utils.DATA_ROOT_ENV, str(env))
    assert utils.resolve_data_root(str(flag)) == str(flag)
    assert utils.resolve_data_root() == str(env)
    monkeypatch.delenv(utils.DATA_ROOT_ENV)
    with pytest.raises(cli.UserError, match="tried --data_root"):
        utils.resolve_data_root()
    course = tmp_path.parent / "Assignment4_datasets"
    course.mkdir(exist_ok=True)
    try:
        assert utils.resolve_data_root() == utils.DEFAULT_DATA_ROOT
    finally:
        course.rmdir()
    with pytest.raises(cli.UserError, match="missing_dir"):
        utils.resolve_data_root(str(tmp_path / "missing_dir"))


@pytest.mark.parametrize(
    "call, valid",
    [
        (lambda root: utils.load_dataset("nope", "train", root), "fakes_dataset, synthetic_dataset"),
        (lambda root: utils.load_dataset("fakes_dataset", "dev", root), "train, val, test"),
        (lambda root: utils.load_model("ResNet"), "SimpleNet, XceptionBased"),
    ],
)
def test_unknown_names_list_valid_ones(tiny_root, call, valid):
    with pytest.raises(cli.UserError, match=valid):
        call(tiny_root)


def test_missing_split_folder_error(tmp_path):
    (tmp_path / "fakes_dataset" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="val") as info:
        utils.load_dataset("fakes_dataset", "val", str(tmp_path))
    assert "make_demo_datasets.py" in str(info.value)


def test_load_dataset_uses_split_transforms(tiny_root):
    train = utils.load_dataset("fakes_dataset", "train", tiny_root)
    test = utils.load_dataset("fakes_dataset", "test", tiny_root)
    assert train.transform.train and not test.transform.train
    image, label = test[0]
    assert image.shape == (3, 256, 256) and image.dtype == torch.float32 and label == 0
    assert len(train) == 12 and train.labels.sum().item() == 4


def test_simplenet_never_touches_xception(monkeypatch):
    import xception

    def boom(*args, **kwargs):
        raise AssertionError("Xception was built for a SimpleNet run")

    monkeypatch.setattr(xception, "build_xception_backbone", boom)
    import models

    monkeypatch.setattr(models, "build_xception_backbone", boom)
    assert type(utils.load_model("SimpleNet")).__name__ == "SimpleNet"


def test_get_device():
    assert utils.get_device("cpu").type == "cpu"
    assert utils.get_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(cli.UserError, match="--device cuda"):
            utils.get_device("cuda")


def test_list_images_ignores_hidden_and_folders(tmp_path):
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "b.JPG").write_bytes(b"x")
    (tmp_path / "a.webp").write_bytes(b"x")
    assert list_images(str(tmp_path)) == ["a.webp", "b.JPG"]


def test_read_rgb_image_refuses_bomb(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 M pixels, tiny file
    with pytest.raises(DataError, match=r"bomb\.png.*too large"):
        read_rgb_image(str(path))


@pytest.mark.parametrize("top, peak", [(255, 255), (200, 255), (4000, 65535), (70000, 2**31 - 1)])
def test_32_bit_grey_is_scaled_by_the_range_of_its_values(top, peak, tmp_path):
    """A 32-bit integer file has no bit depth: 8-bit values stored in it are 8-bit grey, not
    black (they were divided by 65535)."""
    values = np.linspace(0, top, 64 * 64).reshape(64, 64).astype(np.int32)
    path = tmp_path / "grey32.tif"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode == "I"  # really read as 32-bit integers
    expected = np.rint(values * (255.0 / peak)).astype(np.uint8)
    got = np.asarray(read_rgb_image(str(path)))
    assert np.array_equal(got, np.repeat(expected[..., None], 3, axis=2))
    if peak == 255:
        assert got.max() == top  # the 8-bit values themselves


def test_dataset_warnings_are_one_line_without_source_code(tmp_path):
    """A skipped or resized image is one line on stderr naming the script and the file; Python's
    default shows 'file:line: UserWarning:' and then the line of code that warned."""
    split = tmp_path / "split"
    for class_dir in ("real", "fake"):
        (split / class_dir).mkdir(parents=True)
        Image.new("RGB", (256, 256), (90, 90, 90)).save(split / class_dir / "ok.png")
    (split / "fake" / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (100, 80)).save(split / "real" / "small.png")
    code = (
        "import sys; sys.path.insert(0, '.'); sys.argv = ['train_main.py']\n"
        "from faces_dataset import FacesDataset\n"
        f"dataset = FacesDataset({str(split)!r}, skip_corrupt=True)\n"
        "dataset.load_uint8(dataset.real_image_names.index('small.png'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(
        f"train_main.py: warning: skipped: {split / 'fake' / 'broken.png'}: cannot read"
    )
    assert (
        lines[1]
        == f"train_main.py: warning: {split / 'real' / 'small.png'}: image is 100x80, resized to 256x256"
    )
