"""analysis.py and the three analysis scripts, checked against independent computations."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torchvision import transforms as T

import grad_cam_analysis
import numerical_analysis
from lib import class_means, faithfulness, gradcam, metrics_json, saliency, sampling, scores
from lib.cli import UserError, run_cli
from lib.transforms import NORMALIZE_MEAN, NORMALIZE_STD
from models import SimpleNet
from utils import load_dataset, load_model

pytestmark = pytest.mark.usefixtures("flush_denormals")  # random-init Xception (conftest.py)


@pytest.fixture(scope="module")
def checkpoints(module_tmp):
    """A random-init SimpleNet checkpoint (seed 0, as train_main.py writes it), by model name. Every
    command x model is run by test_analysis_matrix.py; these tests check SimpleNet's numbers."""
    torch.manual_seed(0)
    path = str(module_tmp("ckpt") / "SimpleNet.pt")
    torch.save({"model": SimpleNet().state_dict(), "val_acc": 50.0, "test_acc": 50.0, "epoch": 1}, path)
    return {"SimpleNet": path}


def script_args(model, checkpoints, tiny_root, tmp_path, *extra):
    return [
        "-m",
        model,
        "-cpp",
        checkpoints[model],
        "-d",
        "fakes_dataset",
        "--data_root",
        tiny_root,
        "--figures_dir",
        str(tmp_path / "figures"),
        "--device",
        "cpu",
        "--no_progress",
        *extra,
    ]


def independent_logits(checkpoint, tiny_root):
    """Logits of every test image: PIL -> torchvision (v1) ToTensor/Normalize -> one image at a time."""
    model = SimpleNet()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    transform = T.Compose([T.ToTensor(), T.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)])
    logits, labels = [], []
    for label, class_dir in enumerate(("real", "fake")):
        folder = os.path.join(tiny_root, "fakes_dataset", "test", class_dir)
        for name in sorted(os.listdir(folder)):
            image = Image.open(os.path.join(folder, name)).convert("RGB")
            with torch.no_grad():
                logits.append(model(transform(image)[None])[0].double())
            labels.append(label)
    return torch.stack(logits).numpy(), np.array(labels)


# ----------------------------------------------------------------------------- numerical analysis
def test_numerical_analysis_matches_sklearn_on_independent_forward(checkpoints, tiny_root, tmp_path, capsys):
    out_dir = tmp_path / "out"
    json_path = out_dir / "fakes_dataset_SimpleNet_metrics.json"
    out_dir.mkdir()
    json_path.write_text(json.dumps({"grad_cam": {"kept": 1}}))  # another script's section

    args = script_args("SimpleNet", checkpoints, tiny_root, tmp_path, "--out_dir", str(out_dir), "-b", "4")
    assert run_cli(numerical_analysis.main, args) == 0

    logits, labels = independent_logits(checkpoints["SimpleNet"], tiny_root)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    content = json.loads(json_path.read_text())
    assert content["grad_cam"] == {"kept": 1}
    numbers = content["numerical"]
    # score A and B are the raw columns (the course's soft scores); P(fake) is the softmax
    assert numbers["auc_a"] == pytest.approx(roc_auc_score(labels, logits[:, 0]), abs=1e-9)
    assert numbers["auc_b"] == pytest.approx(roc_auc_score(labels, logits[:, 1]), abs=1e-9)
    assert numbers["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-9)
    assert numbers["score_of"]["auc_b"] == "raw output column 1"
    assert numbers["score_of"]["eer"] == numbers["score_of"]["ap"] == "P(fake), softmax column 1"
    assert numbers["ap"] == pytest.approx(average_precision_score(labels, probs[:, 1]), abs=1e-9)
    assert numbers["accuracy"] == pytest.approx(100 * np.mean(probs.argmax(1) == labels))
    assert (numbers["n_real"], numbers["n_fake"], numbers["n_samples"]) == (4, 2, 6)
    assert np.sum(numbers["confusion_matrix"]) == 6

    printed = capsys.readouterr().out
    assert f"{numbers['auc_b']:.4f}" in printed and "EER" in printed

    # The batched scoring gives the same logits as the one-image-at-a-time reference.
    model = SimpleNet()
    model.load_state_dict(torch.load(checkpoints["SimpleNet"], weights_only=True)["model"])
    ours, our_labels = scores.predict_scores(
        model.eval(), load_dataset("fakes_dataset", "test", tiny_root), batch_size=4
    )
    np.testing.assert_array_equal(our_labels, labels)
    np.testing.assert_allclose(ours, logits, atol=1e-5)
    for name in ("roc_curve", "det_curve"):
        with Image.open(tmp_path / "figures" / f"fakes_dataset_SimpleNet_{name}.png") as image:
            assert image.format == "PNG"


def test_scores_a_and_b_are_the_raw_columns_not_complementary():
    # hand computation: positives (label 1) score A 0 and 3 against negatives 2 and 1 -> 2 of 4
    # pairs ranked right; score B 2 and 4 against 0 and 1 -> 4 of 4. With softmax A would be 1 - B.
    labels = np.array([0, 0, 1, 1])
    logits = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 2.0], [3.0, 4.0]])
    numbers = scores.roc_det_metrics(labels, logits)
    assert (numbers["auc_a"], numbers["auc_b"]) == (0.5, 1.0)
    p_fake = torch.softmax(torch.from_numpy(logits), 1)[:, 1].numpy()  # 0.12, 0.5, 0.88, 0.73
    assert numbers["auc"] == pytest.approx(roc_auc_score(labels, p_fake))
    assert numbers["accuracy"] == 100.0  # P(fake) > 0.5 for the two fakes only; the tie goes to real


def test_roc_title_and_det_axes():
    labels = np.array([0, 0, 0, 1, 1, 1])
    logits = np.array([[2, 0], [1, 0.5], [0, 0.2], [0, 1], [0.5, 0.4], [0, 3]], dtype=float)
    fig = scores.plot_roc(labels, logits, "SimpleNet", "fakes_dataset")
    title = fig.axes[0].get_title()  # the course's score A and B (raw columns), and P(fake)
    p_fake = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    aucs = [roc_auc_score(labels, s) for s in (logits[:, 0], logits[:, 1], p_fake)]
    assert title.startswith("ROC of SimpleNet on Deepfakes dataset\n")
    assert f"AUC score A = {aucs[0]:.4f}, score B = {aucs[1]:.4f}, P(fake) = {aucs[2]:.4f}" in title
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("P(fake)" in t and f"{aucs[2]:.2f}" in t for t in legend), legend
    fig = scores.plot_det(labels, logits, "SimpleNet", "fakes_dataset")
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for auc, name in zip(aucs, ("score A", "score B", "P(fake)")):
        assert any(name in t and f"AUC = {auc:.4f}" in t for t in legend), (name, legend)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "0.1%" and ticks[-1] == "99.9%"
    low, high = ax.get_xlim()
    assert low < -3.09 and high > 3.09  # norm.ppf(0.001) = -3.09: both end ticks are visible
    assert len(ax.get_lines()) >= 2


def test_update_metrics_json_keeps_sections_and_moves_corrupt_aside(tmp_path):
    path = str(tmp_path / "m.json")
    metrics_json.update_metrics_json(path, {"numerical": {"auc_b": 0.9}})
    metrics_json.update_metrics_json(path, {"grad_cam": {"gap": 0.1}})
    assert json.loads(open(path).read()) == {"numerical": {"auc_b": 0.9}, "grad_cam": {"gap": 0.1}}
    with open(path, "w") as handle:
        handle.write("{broken")
    with pytest.warns(UserWarning, match="moved aside"):
        metrics_json.update_metrics_json(path, {"grad_cam": {"gap": 0.2}})
    assert json.loads(open(path).read()) == {"grad_cam": {"gap": 0.2}}
    aside = [n for n in os.listdir(tmp_path) if ".corrupt-" in n]
    assert len(aside) == 1 and open(tmp_path / aside[0]).read() == "{broken"
    (tmp_path / ".m.json.k1ll3d.tmp").write_text('{"numerical": "a killed write"}')
    (tmp_path / ".other.json.k1ll3d.tmp").write_text("another file's")
    metrics_json.update_metrics_json(path, {"numerical": {"auc_b": 0.8}})  # the killed write's temp goes
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".tmp")) == [".other.json.k1ll3d.tmp"]
    assert json.loads(open(path).read()) == {"grad_cam": {"gap": 0.2}, "numerical": {"auc_b": 0.8}}


# ----------------------------------------------------------------------------- saliency
def test_saliency_matches_per_image_autograd():
    torch.manual_seed(0)
    model = SimpleNet().eval()
    images = torch.randn(3, 3, 256, 256)
    labels = torch.tensor([0, 1, 1])
    batched = saliency.saliency_maps(model, images, labels)
    assert batched.shape == (3, 256, 256)
    assert all(p.grad is None for p in model.parameters())
    for i in range(3):
        x = images[i : i + 1].clone().requires_grad_(True)
        model(x)[0, labels[i]].backward()
        expected = x.grad[0].abs().max(dim=0).values
        torch.testing.assert_close(batched[i], expected, rtol=1e-4, atol=1e-7)
    # The true class matters: the other class gives another map.
    assert not torch.allclose(batched[0], saliency.saliency_maps(model, images[:1], [1])[0])


def test_saliency_matches_central_finite_differences():
    torch.manual_seed(1)
    model = (
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
        .double()
        .eval()
    )
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    labels = torch.tensor([1, 0])
    maps = saliency.saliency_maps(model, images, labels)
    eps = 1e-6
    for i in range(2):
        steps = torch.eye(3 * 64, dtype=torch.float64).view(-1, 3, 8, 8) * eps
        with torch.no_grad():
            plus = model(images[i] + steps)[:, labels[i]]
            minus = model(images[i] - steps)[:, labels[i]]
        gradient = ((plus - minus) / (2 * eps)).view(3, 8, 8)
        torch.testing.assert_close(maps[i], gradient.abs().amax(dim=0), rtol=1e-6, atol=1e-9)


def test_mean_maps_follow_the_recipe(checkpoints, tiny_root):
    from utils import load_dataset

    model = SimpleNet()
    model.load_state_dict(torch.load(checkpoints["SimpleNet"], weights_only=True)["model"])
    model.eval()
    dataset = load_dataset("fakes_dataset", "test", tiny_root)
    means, counts = class_means.mean_maps_per_class(
        dataset, lambda x, y: saliency.saliency_maps(model, x, y), 4, "cpu"
    )
    assert counts == {0: 4, 1: 2}
    maps = []
    for i in range(len(dataset)):
        image, label = dataset[i]
        maps.append(saliency.saliency_maps(model, image[None], [label])[0].double())
    for label, members in ((0, range(0, 4)), (1, range(4, 6))):
        scaled = [(m - m.min()) / (m.max() - m.min()) for m in (maps[i] for i in members)]
        expected = torch.stack(scaled).mean(0)  # the figure scales it again (test_figures)
        np.testing.assert_allclose(means[label], expected.numpy(), atol=1e-5)
        assert means[label].min() >= 0.0 and means[label].max() <= 1.0


def test_pick_mixed_indices_is_deterministic_and_mixed():
    labels = np.array([0] * 30 + [1] * 12)
    first = sampling.pick_mixed_indices(labels, 36, seed=3)
    assert np.array_equal(first, sampling.pick_mixed_indices(labels, 36, seed=3))
    assert len(first) == 36 and len(set(first)) == 36
    assert (labels[first] == 1).sum() == 12 and (labels[first] == 0).sum() == 24
    assert not np.array_equal(first, sampling.pick_mixed_indices(labels, 36, seed=4))
    balanced = sampling.pick_mixed_indices(np.array([0] * 50 + [1] * 50), 36, seed=0)
    assert (balanced >= 50).sum() == 18


@pytest.mark.parametrize("n, rows", [(24, 4), (36, 6), (5, 1)])
def test_saliency_pairs_figure_fits_the_images(n, rows):
    images = np.zeros((n, 3, 16, 16), np.uint8)
    labels = np.array([0] * (n // 2) + [1] * (n - n // 2))
    p_fake = np.linspace(0.0, 1.0, n)
    fig = saliency.plot_saliency_pairs(images, np.random.rand(n, 16, 16), labels, p_fake, "t")
    per_row = min(6, n)
    assert len(fig.axes) == rows * 2 * per_row  # no blank row: the grid fits n
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert len(shown) == 2 * n
    titles = [ax.get_title() for ax in shown]
    assert titles[0] == "Real, P(fake) 0.000" and titles[-2] == f"Fake, P(fake) {p_fake[-1]:.3f}"
    assert titles.count("saliency") == n


# ----------------------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("model_name,size", [("SimpleNet", 256), ("XceptionBased", 96)])
def test_grad_cam_matches_pytorch_grad_cam(model_name, size):
    torch.manual_seed(0)
    model = load_model(model_name, pretrained=False).eval()
    images = torch.randn(2, 3, size, size)
    labels = [1, 0]
    ours = gradcam.grad_cam_maps(model, "conv3", images, labels)
    assert ours.shape == (2, size, size) and ours.dtype == np.float32
    assert not model.conv3._forward_hooks  # the context manager removed its hooks
    for i, label in enumerate(labels):
        with GradCAM(model=model, target_layers=[model.conv3]) as cam:
            expected = cam(input_tensor=images[i : i + 1], targets=[ClassifierOutputTarget(label)])[0]
        np.testing.assert_allclose(ours[i], expected, atol=1e-4)
    assert ours.max() == pytest.approx(1.0, abs=1e-5) and ours.min() >= 0.0


def test_grad_cam_backward_skips_other_weight_gradients_and_restores_flags():
    torch.manual_seed(0)
    model = load_model("SimpleNet", pretrained=False).eval()
    model.conv1.bias.requires_grad_(False)  # a frozen parameter stays frozen
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    with gradcam.gradients_only_for(model, model.conv3):
        inside = {name for name, p in model.named_parameters() if p.requires_grad}
        logits = model(torch.randn(2, 3, 256, 256))
        logits[:, 1].sum().backward()
        with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert inside == with_grad == {"conv3.weight", "conv3.bias"}
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    with gradcam.gradients_only_for(model, model.relu):  # no parameters of its own: no change
        assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    gradcam.grad_cam_maps(model, "conv3", torch.randn(1, 3, 256, 256), [1])
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())


def test_resolve_layer_dotted_and_unknown():
    xception = load_model("XceptionBased", pretrained=False)
    assert gradcam.resolve_layer(xception, "block12.rep.4") is xception.block12.rep[4]
    assert gradcam.resolve_layer(xception) is xception.conv3
    with pytest.raises(UserError) as info:
        gradcam.resolve_layer(xception, "conv9")
    message = str(info.value)
    assert "'conv9'" in message and "conv3" in message and "block12.rep.4" in message
    assert "block12.rep.4.pointwise" not in message  # inner parts of a SeparableConv2d are not listed
    with pytest.raises(UserError, match="conv1, conv2, conv3"):
        gradcam.resolve_layer(SimpleNet(), "fc9")


def test_grad_cam_layer_without_feature_map_is_a_user_error():
    model = SimpleNet().eval()
    with pytest.raises(UserError, match="feature map"):
        gradcam.grad_cam_maps(model, "fc3", torch.randn(1, 3, 256, 256), [0])
    assert not model.fc3._forward_hooks


def test_deletion_faithfulness_exact_on_a_known_model():
    class TopLeft(nn.Module):  # fake logit = 10 x mean of the top-left 4x4 block of channel 0
        def forward(self, x):
            fake = 10 * x[:, 0, :4, :4].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(fake), fake], dim=1)

    image = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    image[:, :, :4, :4] = 1.0
    relevance = torch.zeros(1, 8, 8)
    relevance[:, :4, :4] = 1.0
    result = faithfulness.deletion_faithfulness(
        TopLeft(), image, [1], relevance, fractions=[0.25], generator=torch.Generator().manual_seed(0)
    )
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    # The top-left block (16 = 25 % of the pixels) becomes the channel mean 0.25: logit 2.5.
    assert result["map_drop"][0, 0] == pytest.approx(sigmoid(10) - sigmoid(2.5))
    assert result["random_drop"][0, 0] < result["map_drop"][0, 0]


@pytest.mark.parametrize("levels", [1, 2, 5, 1000])  # 1: a constant map; 1000: almost no ties
def test_rank_pixels_breaks_ties_in_the_random_order(levels):
    """Highest score first; among equal scores, the random order (checked against numpy's lexsort)."""
    generator = torch.Generator().manual_seed(levels)
    scores = torch.randint(0, levels, (3, 400), generator=generator).float()
    random_order = torch.rand((3, 400), generator=generator).argsort(dim=1, descending=True)
    rank_in_random = random_order.argsort(dim=1).numpy()  # where each pixel comes in the random order
    expected = [np.lexsort((rank_in_random[i], -scores[i].numpy())) for i in range(3)]
    assert np.array_equal(faithfulness.rank_pixels(scores, random_order).numpy(), np.stack(expected))


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_a_constant_map_removes_the_random_pixels(value):
    """A map without information (all zeros, as Grad-CAM's ReLU can give) must score as random
    pixels do, even for a model that reads one band of rows (topk's order of ties was such a band)."""

    class Band(nn.Module):  # fake logit from rows 160-175 of channel 0 only
        def forward(self, x):
            fake = 4 * x[:, 0, 160:176, :].mean(dim=(1, 2)) - 2
            return torch.stack([torch.zeros_like(fake), fake], dim=1)

    images = torch.zeros(2, 3, 256, 256)
    images[:, :, 160:176, :] = 1.0
    result = faithfulness.deletion_faithfulness(
        Band(), images, [1, 1], torch.full((2, 256, 256), value), generator=torch.Generator().manual_seed(0)
    )
    assert result["random_drop"].min() > 0  # the random pixels did touch the band
    assert np.array_equal(result["map_drop"], result["random_drop"])


def test_faithfulness_accumulator_tests_only_its_images():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()
    images, labels, maps = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), torch.rand(4, 8, 8)
    subset = faithfulness.FaithfulnessAccumulator(model, [0.5], only=[1, 6])
    subset(images, labels, maps, indices=[4, 5, 6, 7])  # dataset indices 4..7: only 6 is tested
    subset(images, labels, maps, indices=[0, 1, 2, 3])  # only 1
    alone = faithfulness.FaithfulnessAccumulator(model, [0.5])
    alone(images[[2, 1]], labels[[2, 1]], maps[[2, 1]])  # the same two images, nothing filtered
    assert subset.summary()["n_images"] == 2
    assert subset.summary()["mean_confidence"] == pytest.approx(alone.summary()["mean_confidence"])
    with pytest.raises(ValueError, match="indices"):
        subset(images, labels, maps)  # a filter without indices would silently test every image


@pytest.mark.parametrize(
    "max_images, faithfulness_images, n_mean, n_faith",
    [
        (0, 3, 6, 3),  # the study's setting: all images for the mean maps, a subset for the test
        (2, 4, 2, 4),  # the test needs images the mean maps do not use
        (4, 0, 4, 4),  # 0: the test uses the mean maps' images
        (2, 50, 2, 6),  # more than the split: the test uses every image, the mean maps only 2
    ],
)
def test_grad_cam_faithfulness_subset_in_one_pass(
    max_images, faithfulness_images, n_mean, n_faith, checkpoints, tiny_root, tmp_path, monkeypatch
):
    seen, mapped = [], []
    original, original_maps = faithfulness.deletion_faithfulness, gradcam.grad_cam_maps

    def spy(model, images, labels, maps, *args, **kwargs):
        seen.append(len(images))
        return original(model, images, labels, maps, *args, **kwargs)

    def maps_spy(model, layer, images, labels):
        mapped.append(len(images))
        return original_maps(model, layer, images, labels)

    monkeypatch.setattr(faithfulness, "deletion_faithfulness", spy)
    monkeypatch.setattr(gradcam, "grad_cam_maps", maps_spy)
    labels = load_dataset("fakes_dataset", "test", tiny_root).labels.numpy()
    mean_set = set(sampling.pick_mixed_indices(labels, max_images, 0)) if max_images else set(range(6))
    faith_set = (
        set(sampling.pick_mixed_indices(labels, faithfulness_images, 0)) if faithfulness_images else mean_set
    )
    out_dir = tmp_path / "out"
    extra = [
        "--out_dir",
        str(out_dir),
        "--max_images",
        str(max_images),
        "--faithfulness_images",
        str(faithfulness_images),
    ]
    assert (
        run_cli(grad_cam_analysis.main, script_args("SimpleNet", checkpoints, tiny_root, tmp_path, *extra))
        == 0
    )
    section = json.loads((out_dir / "fakes_dataset_SimpleNet_metrics.json").read_text())["grad_cam"]
    assert section["n_real"] + section["n_fake"] == n_mean
    assert section["n_images"] == n_faith == sum(seen)
    # maps: the two figure images, the mean maps' images, and only the test images they lack
    assert sum(mapped) == 2 + n_mean + len(faith_set - mean_set)


def test_grad_cam_script_unknown_layer(checkpoints, tiny_root, tmp_path, capsys):
    args = script_args("SimpleNet", checkpoints, tiny_root, tmp_path, "--target_layer", "conv7")
    assert run_cli(grad_cam_analysis.main, args) == 2
    err = capsys.readouterr().err
    assert "conv7" in err and "conv1, conv2, conv3" in err
    assert not os.path.exists(tmp_path / "figures")


def test_class_sums_match_numpy_per_class_means():
    """Per-class means over uneven batches equal numpy's masked means; a class with a NaN image
    keeps it to itself; a class never seen has no mean."""
    rng = np.random.default_rng(5)
    values, labels = rng.normal(size=(7, 3, 4)), np.array([0, 1, 1, 0, 1, 1, 0])
    values[1, 0, 0] = np.nan  # a fake
    sums = class_means.ClassSums()
    for rows in (slice(0, 3), slice(3, 4), slice(4, 7)):
        sums.add(torch.from_numpy(values[rows]), torch.from_numpy(labels[rows]))
    assert sums.counts() == {0: 3, 1: 4}
    np.testing.assert_allclose(sums.mean(0).numpy(), values[labels == 0].mean(0), rtol=1e-12)
    np.testing.assert_allclose(sums.mean(1).numpy(), values[labels == 1].mean(0), rtol=1e-12)
    only_real = class_means.ClassSums()
    only_real.add(torch.ones(2, 3), torch.zeros(2, dtype=torch.long))
    assert only_real.mean(1) is None and only_real.counts() == {0: 2, 1: 0}
