"""The blur and JPEG training augmentation (docs/design.md#degradations): what the model trains on
is, image by image, torchvision's ``gaussian_blur`` and ``jpeg`` applied by hand with the parameters
drawn from (seed, epoch), then the crop and flip; the same --seed gives the same run whatever the
batch path; the flags are recorded, and --resume refuses a change. Off by default."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import train_main
import utils
from conftest import cpu_trainer, one_line_error, train_argv
from faces_dataset import FacesDataset
from lib import cli
from lib.batching import seeded_generator
from lib.cli import run_cli
from lib.transforms import Degradations, GaussianBlurSigma, StudyTransform, normalize_batch

RECIPE = Degradations(blur_prob=0.5, blur_sigma=(0.0, 3.0), jpeg_prob=0.5, jpeg_quality=(30, 100))
AUGMENT = ["--blur_prob", "0.5", "--jpeg_prob", "0.5"]


def by_hand(image: torch.Tensor, params: list[float]) -> torch.Tensor:
    """One uint8 image through blur, JPEG, zero-pad-crop and flip with its drawn parameters
    (blur applied, sigma, JPEG applied, quality, top, left, flip), with torchvision's functionals."""
    blurred, sigma, compressed, quality, top, left, flip = params
    if blurred and sigma > 0:
        size = 2 * math.ceil(3 * sigma) + 1
        image = TF.gaussian_blur(image, [size, size], [sigma, sigma])
    if compressed:
        image = TF.jpeg(image, int(quality))
    image = nn.functional.pad(image, (4, 4, 4, 4))[:, int(top) : int(top) + 256, int(left) : int(left) + 256]
    return image.flip(-1) if flip else image


def test_off_by_default_the_study_transform_is_unchanged():
    for degradations in (None, Degradations(), Degradations(blur_sigma=(1.0, 2.0), jpeg_quality=(50, 60))):
        steps = StudyTransform(True, degradations).transforms
        assert [type(s) for s in steps] == [
            v2.ToImage,
            v2.RandomCrop,
            v2.RandomHorizontalFlip,
            v2.ToDtype,
            v2.Normalize,
        ]
    draws = [
        StudyTransform(True, d).batched().draw(16, torch.Generator().manual_seed(3))
        for d in (None, Degradations())
    ]
    assert torch.equal(*draws)
    with pytest.raises(ValueError, match="train"):
        StudyTransform(False, RECIPE)


def test_batched_blur_and_jpeg_equal_torchvision_by_hand():
    """A fixed seed's draw for 12 images: some blurred, some compressed, some both, some neither,
    each equal to torchvision's functionals applied by hand; the draws cover the recipe's ranges."""
    batched = StudyTransform(True, RECIPE).batched()
    images = torch.randint(
        0, 256, (12, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(4)
    )
    params = batched.draw(12, seeded_generator(11, 1))
    out = batched.augment(images, params)
    for k in range(12):
        assert torch.equal(out[k], by_hand(images[k], params[k].tolist())), k
    kinds = {(bool(p[0]), bool(p[2])) for p in params.tolist()}
    assert kinds == {(False, False), (True, False), (False, True), (True, True)}
    assert params[:, 1].min() >= 0 and params[:, 1].max() <= 3
    assert set(params[:, 3].tolist()) <= set(range(30, 101)) and params[:, 3].frac().eq(0).all()
    assert torch.equal(batched.draw(12, seeded_generator(11, 1)), params)  # seeded: drawn again alike


def test_the_per_image_steps_give_the_same_images_for_the_same_parameters():
    """The torchvision steps of the per-image path (GaussianBlurSigma, v2.JPEG inside RandomApply),
    given the parameters the batched path drew, give the same pixels."""
    transform = StudyTransform(True, RECIPE)
    _, blur, jpeg, *_ = transform.transforms
    batched = transform.batched()
    images = torch.randint(
        0, 256, (6, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(5)
    )
    params = batched.draw(6, seeded_generator(2, 3))
    params[:, [0, 2, 4, 5, 6]] = torch.tensor(
        [1.0, 1.0, 4.0, 4.0, 0.0], dtype=torch.float64
    )  # blur and JPEG, no shift or flip
    out = batched.augment(images, params)
    for k, (_, sigma, _, quality, *_) in enumerate(params.tolist()):
        image = blur.transforms[0].transform(v2.ToImage()(images[k]), {"sigma": sigma})
        image = jpeg.transforms[0].transform(image, {"quality": int(quality)})
        assert torch.equal(out[k], image.as_subclass(torch.Tensor))
    assert not torch.equal(out, images)


def test_blur_of_sigma_zero_is_the_image_and_other_steps_are_refused():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert torch.equal(GaussianBlurSigma((0.0, 0.0))(image), image)
    transform = StudyTransform(True)
    transform.transforms.insert(1, v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.5))
    with pytest.raises(cli.UserError, match=r"RandomApply.*no batched uint8 twin"):
        transform.batched()


@pytest.mark.parametrize("cached", [False, True], ids=["uint8-dataloader", "from-cache"])
def test_the_trainer_trains_on_the_degraded_images(tiny_root, cached):
    """What the model sees in training, batch by batch in the sampler's order, is ``by_hand`` of
    every image with the parameters drawn from (seed, epoch), normalised."""
    transform = StudyTransform(True, RECIPE)
    train = FacesDataset(os.path.join(tiny_root, "fakes_dataset", "train"), transform, cache_images=cached)
    evaluation = utils.load_dataset("fakes_dataset", "val", tiny_root)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 256 * 256, 2))
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    trainer = cpu_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.0), [train, evaluation, evaluation], 5, seed=7
    )
    trainer.train_one_epoch()
    params = transform.batched().draw(len(train), seeded_generator(7, 1)).tolist()  # epoch 0's draw
    order = list(DistributedSampler(range(len(train)), num_replicas=1, rank=0, shuffle=True, seed=7))
    expected = torch.stack([by_hand(train.load_uint8(i), params[i]) for i in order])
    torch.testing.assert_close(torch.cat(seen), normalize_batch(expected), rtol=0, atol=1e-6)
    assert any(p[0] for p in params) and any(p[2] for p in params)


@pytest.fixture(scope="module")
def runs(tiny_root, module_tmp):
    """``runs(name, *flags)``: the last run of a 1-epoch SimpleNet training on tiny data, kept."""
    done = {}

    def run(name: str, *flags: str) -> dict:
        if name not in done:
            work = module_tmp(f"degrade_{name}")
            argv = train_argv(tiny_root, work, "-o", "Adam", "-b", "4", "-e", "1", "--seed", "1", *flags)
            assert run_cli(train_main.main, argv) == 0
            done[name] = json.loads((work / "out" / "fakes_dataset_SimpleNet_Adam.json").read_text())[-1]
            done[name]["work"] = work
        return done[name]

    return run


METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


def test_same_seed_same_run_whatever_the_batch_path(runs):
    cached = runs("cached", *AUGMENT)
    loader = runs("workers", *AUGMENT, "--cache_images", "off", "--num_workers", "1")
    plain = runs("plain")
    assert {k: cached[k] for k in METRICS} == {k: loader[k] for k in METRICS}
    assert cached["train_loss"] != plain["train_loss"]  # the augmentation reached training


def test_recorded_in_args_and_protocol_and_resume_refuses_a_change(runs, tiny_root, capsys):
    run = runs("cached", *AUGMENT)
    assert {k: run["args"][k] for k in ("blur_prob", "blur_sigma", "jpeg_prob", "jpeg_quality")} == {
        "blur_prob": 0.5,
        "blur_sigma": [0.0, 3.0],
        "jpeg_prob": 0.5,
        "jpeg_quality": [30, 100],
    }
    assert {k: run["protocol"][k] for k in ("blur_prob", "blur_sigma", "jpeg_prob", "jpeg_quality")} == {
        "blur_prob": 0.5,
        "blur_sigma": [0.0, 3.0],
        "jpeg_prob": 0.5,
        "jpeg_quality": [30, 100],
    }
    plain = runs("plain")["protocol"]
    assert (plain["blur_prob"], plain["blur_sigma"], plain["jpeg_prob"], plain["jpeg_quality"]) == (
        0,
        None,
        0,
        None,
    )
    argv = train_argv(tiny_root, run["work"], "-o", "Adam", "-b", "4", "-e", "2", "--seed", "1", "--resume")
    one_line_error(
        capsys, train_main.main, [*argv, *AUGMENT, "--jpeg_quality", "50", "100"], "--jpeg_quality"
    )
    one_line_error(capsys, train_main.main, [*argv, "--blur_prob", "0.5"], "--jpeg_prob 0.0 differs")


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--blur_sigma", "3", "1"], "--blur_sigma 3 1"),
        (["--jpeg_quality", "90", "40"], "--jpeg_quality 90 40"),
    ],
)
def test_a_reversed_range_is_refused(flags, needle, tiny_root, tmp_path, capsys):
    one_line_error(
        capsys, train_main.main, train_argv(tiny_root, tmp_path, *flags), needle, "LOW must not exceed HIGH"
    )


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--jpeg_quality", "0", "100"], "argument --jpeg_quality: must be from 1 to 100"),
        (["--blur_prob", "1.5"], "argument --blur_prob: must be from 0 to 1"),
        (["--blur_sigma", "-1", "2"], "argument --blur_sigma: must be 0 or more"),
    ],
)
def test_out_of_range_values_are_argparse_errors(flags, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main.build_parser().parse_args(flags)
    assert exit_info.value.code == 2 and needle in capsys.readouterr().err
