"""The torchvision backbones (docs/design.md#model-registry): the registry is the one model list,
each backbone trains one step through train_main.py and gives Grad-CAM at its default layer, and
their ImageNet weights are found as the Xception weights are, never downloaded here.

Every model is built with random initialisation; TORCH_HOME points into tmp_path where weights are
looked for, and downloads are off (XCEPTION_NO_DOWNLOAD=1, tests/conftest.py), except from a local
HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

import train_main
from conftest import make_split, one_line_error, train_argv
from lib import cross_dataset, gradcam, memory, names, torchvision_weights
from lib.cli import run_cli
from lib.model_specs import HEAD_NAMES, MODEL_SPECS, model_spec, spec_of_state_dict
from lib.torchvision_weights import PretrainedWeightsError
from run_study import model_facts
from utils import get_nof_params, load_model, load_model_from_checkpoint, set_seed

pytestmark = pytest.mark.usefixtures("flush_denormals")

BACKBONES = [name for name, spec in MODEL_SPECS.items() if spec.torchvision]
LR = 0.001


# ----------------------------------------------------------------------------- the registry
def meta_state_dict(builder, **kwargs) -> dict:
    """A torchvision model's state dict on the meta device: its keys and shapes, no memory."""
    with torch.device("meta"):
        return builder(**kwargs).state_dict()


def test_the_registry_is_the_model_list():
    assert tuple(MODEL_SPECS) == names.MODEL_NAMES
    assert names.MODEL_NAMES[:2] == ("SimpleNet", "XceptionBased")  # the course's, first
    assert set(BACKBONES) == {"resnet50", "efficientnet_b4"}
    choices = next(a for a in train_main.build_parser()._actions if a.dest == "model").choices
    assert tuple(choices) == names.MODEL_NAMES


@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_each_model_recognises_its_own_state_dict_and_head(name):
    spec = model_spec(name)
    for head in spec.heads or (None,):
        state = load_model(name, pretrained=False, head=head).state_dict()
        assert spec_of_state_dict(state) is spec, (name, head)
        assert [other for other in MODEL_SPECS.values() if other.matches(state)] == [spec]
        assert spec.head_of(state) == head


def test_deeper_and_wider_variants_are_not_taken_for_a_backbone():
    models = torchvision.models
    for builder in (models.resnet18, models.resnet101, models.resnet152, models.wide_resnet50_2):
        assert spec_of_state_dict(meta_state_dict(builder)) is None, builder.__name__
    for builder in (models.efficientnet_b0, models.efficientnet_b3, models.efficientnet_b5):
        assert spec_of_state_dict(meta_state_dict(builder)) is None, builder.__name__
    assert spec_of_state_dict(meta_state_dict(models.resnet50)).name == "resnet50"


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("head", HEAD_NAMES)
def test_parameter_counts_against_torchvision(name, head):
    """The 1000-class classifier of torchvision's model replaced by the head, counted by hand."""
    spec = model_spec(name)
    reference = getattr(torchvision.models, spec.torchvision)(weights=None)
    classifier = reference.get_submodule(spec.classifier)
    f = classifier.in_features
    head_params = {
        "linear": f * 2 + 2,
        "mlp": f * 1000 + 1000 + 1000 * 256 + 256 + 256 * 64 + 64 + 64 * 2 + 2,
    }
    expected = get_nof_params(reference) - (f * 1000 + 1000) + head_params[head]
    model = load_model(name, pretrained=False, head=head)
    assert get_nof_params(model) == expected
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_the_report_counts_every_model():
    facts = model_facts()
    for name in BACKBONES:
        assert facts[name] == get_nof_params(load_model(name, pretrained=False))


def test_output_names_parse_back_for_names_with_underscores():
    spec = cross_dataset.parse_checkpoint_spec("ck/my_set_efficientnet_b4_Adam.pt")
    assert (spec.dataset, spec.model, spec.optimizer) == ("my_set", "efficientnet_b4", "Adam")
    spec = cross_dataset.parse_checkpoint_spec("fakes_dataset:resnet50:any.pt")
    assert (spec.dataset, spec.model) == ("fakes_dataset", "resnet50")


def test_defaults_follow_the_registry():
    assert gradcam.target_layer_name("SimpleNet", None) == "conv3"  # the study's, unchanged
    assert gradcam.target_layer_name("XceptionBased", None) == "conv3"
    assert gradcam.target_layer_name("resnet50", None) == "layer4"
    assert gradcam.target_layer_name("efficientnet_b4", None) == "features.8"
    assert gradcam.target_layer_name("resnet50", "layer3") == "layer3"
    for name in BACKBONES:  # never activation checkpointing, however little memory is left
        assert memory.resolve_activation_checkpointing(
            "auto", name, torch.device("cpu"), 64, available=1
        ) == (
            False,
            None,
        )
    assert memory.resolve_activation_checkpointing("auto", "XceptionBased", "cpu", 64, available=1)[0]


# ----------------------------------------------------------------------------- train and Grad-CAM
@pytest.fixture(scope="module")
def one_step_root(module_tmp) -> str:
    """fakes_dataset with 1 real + 1 fake image per split: one training step at batch 2."""
    root = module_tmp("one_step")
    for s, split in enumerate(("train", "val", "test")):
        make_split(str(root / "fakes_dataset" / split), 1, 1, 70 + s)
    return str(root)


@pytest.fixture(scope="module")
def trained(one_step_root, module_tmp):
    """``trained(name, head)``: the work folder of a one-step train_main.py run (kept per module)."""
    done = {}

    def train(name: str, head: str) -> Path:
        if (name, head) not in done:
            work = module_tmp(f"train_{name}_{head}")
            argv = train_argv(one_step_root, work, "-m", name, "--head", head, "--no_pretrained")
            assert run_cli(train_main.main, [*argv, "-o", "Adam", "--lr", str(LR), "-b", "2", "-e", "1"]) == 0
            done[(name, head)] = work
        return done[(name, head)]

    return train


CASES = [("resnet50", "linear"), ("efficientnet_b4", "mlp")]  # each backbone, each head once


@pytest.mark.parametrize("name, head", CASES)
def test_one_training_step(name, head, trained, capsys):
    work = trained(name, head)
    stem = names.output_stem("fakes_dataset", name, "Adam")
    (run,) = json.loads((work / "out" / f"{stem}.json").read_text())
    assert (run["model"], run["head"], run["args"]["head"], run["protocol"]["head"]) == (
        name,
        head,
        head,
        head,
    )
    assert run["pretrained"] is False and len(run["train_loss"]) == 1 and np.isfinite(run["train_loss"][0])
    set_seed(0)  # train_main.py's initial weights: --seed 0, then the model is built
    initial_model = load_model(name, pretrained=False, head=head)
    initial = initial_model.state_dict()
    assert run["n_params"] == get_nof_params(initial_model)
    checkpoint = torch.load(work / "ck" / f"{stem}.pt", weights_only=True)
    assert (checkpoint["model_name"], checkpoint["head"]) == (name, head)
    # One Adam step moves each weight by lr * g / (|g| + eps) (bias-corrected): at most lr, and lr
    # where the gradient is not tiny; the last layer of the head always has a gradient.
    last = (
        f"{model_spec(name).classifier}.weight"
        if head == "linear"
        else f"{model_spec(name).classifier}.6.weight"
    )
    step = (checkpoint["model"][last] - initial[last]).abs()
    assert step.max() <= LR * (1 + 1e-5) and step.max() > 0.99 * LR
    moved = [
        k for k, v in checkpoint["model"].items() if v.is_floating_point() and not torch.equal(v, initial[k])
    ]
    assert {"conv1.weight", "features.0.0.weight"} & set(moved)  # the backbone's first conv trains too


def hand_grad_cam(model, layer, images, labels) -> np.ndarray:
    """Grad-CAM by hand: the layer's activations A and gradients G of the true class's logit;
    ReLU(sum_k mean(G_k) A_k), scaled to [0, 1], resized to the image with OpenCV and scaled to
    [0, 1] again, as pytorch-grad-cam presents its maps."""
    saved = {}
    hook = layer.register_forward_hook(lambda m, i, out: saved.update(a=out))
    try:
        with torch.enable_grad():
            logits = model(images.requires_grad_(True))
            target = logits[torch.arange(len(labels)), torch.as_tensor(labels)].sum()
            (grads,) = torch.autograd.grad(target, saved["a"])
    finally:
        hook.remove()
    cams = torch.relu((grads.mean((2, 3), keepdim=True) * saved["a"]).sum(1)).detach().numpy()

    def scaled(cam):
        cam = cam - cam.min()
        return cam / (cam.max() + 1e-7)

    size = tuple(images.shape[-2:][::-1])
    return np.stack([scaled(np.maximum(cv2.resize(scaled(cam), size), 0)) for cam in cams])


@pytest.mark.parametrize("name, head", CASES)
def test_grad_cam_at_the_default_layer_of_the_trained_checkpoint(name, head, trained):
    stem = names.output_stem("fakes_dataset", name, "Adam")
    model = load_model_from_checkpoint(name, str(trained(name, head) / "ck" / f"{stem}.pt"))
    assert model_spec(name).head_of(model.state_dict()) == head  # rebuilt with the run's head
    layer_name = gradcam.target_layer_name(name, None)
    torch.manual_seed(1)
    images, labels = torch.randn(2, 3, 128, 128), [0, 1]  # any size: both end in global pooling
    maps = gradcam.grad_cam_maps(model, layer_name, images, labels)
    assert maps.shape == (2, 128, 128) and maps.max() > 0.99
    expected = hand_grad_cam(model, gradcam.resolve_layer(model, layer_name), images.clone(), labels)
    np.testing.assert_allclose(maps, expected, atol=2e-3)


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize(
    "extra, needles",
    [
        (["-m", "XceptionBased", "--head", "linear"], ["--head linear", "XceptionBased"]),
        (["-m", "SimpleNet", "--head", "mlp"], ["--head mlp", "SimpleNet"]),
        (["-m", "resnet50", "--activation_checkpointing"], ["--activation_checkpointing", "resnet50"]),
        (["-m", "SimpleNet", "--pretrained_weights", "w.pth"], ["--pretrained_weights", "SimpleNet"]),
        (["-m", "resnet50", "--xception_weights", "w.pth"], ["--xception_weights", "--pretrained_weights"]),
    ],
)
def test_flags_a_model_cannot_take(extra, needles, one_step_root, tmp_path, capsys):
    one_line_error(capsys, train_main.main, train_argv(one_step_root, tmp_path, *extra), *needles)
    assert not (tmp_path / "out").exists(), "refused before anything is written"


# ----------------------------------------------------------------------------- ImageNet weights
@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    """An empty torch hub cache in tmp_path, downloads off; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("XCEPTION_NO_DOWNLOAD", "1")
    assert Path(torch.hub.get_dir()).is_relative_to(tmp_path)
    return Path(torch.hub.get_dir()) / "checkpoints"


@pytest.fixture(scope="module")
def imagenet_file(module_tmp) -> tuple[Path, dict]:
    """A file in the format of torchvision's ResNet-50 weights (random values), and its state dict."""
    torch.manual_seed(5)
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = module_tmp("imagenet") / "weights.pth"
    torch.save(state, path)
    return path, state


def assert_backbone_from(model, state) -> None:
    for key in ("conv1.weight", "layer4.2.conv3.weight", "layer4.2.bn3.running_var"):
        assert torch.equal(model.state_dict()[key], state[key]), key
    assert model.fc.weight.shape == (2, 2048)  # the head is new


def test_weights_from_torchvisions_cache(hub, imagenet_file):
    path, state = imagenet_file
    spec = model_spec("resnet50")
    cached = torchvision_weights.cache_path(spec)
    assert cached == hub / Path(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url).name
    cached.parent.mkdir(parents=True)
    cached.symlink_to(path)
    model = load_model("resnet50")
    assert model.weights_info.source == str(cached) and "cache" in model.weights_info.origin
    assert_backbone_from(model, state)


def test_explicit_file_beats_the_cache_and_a_missing_one_is_an_error(hub, imagenet_file, tmp_path):
    _, state = imagenet_file
    hub.mkdir(parents=True)
    torch.save(
        torchvision.models.resnet50(weights=None).state_dict(),
        torchvision_weights.cache_path(model_spec("resnet50")),
    )
    wrapped = tmp_path / "wrapped.pth"  # a training checkpoint around it, with DataParallel's prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    model = load_model("resnet50", weights_path=str(wrapped))
    assert model.weights_info.source == str(wrapped)
    assert_backbone_from(model, state)
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        load_model("resnet50", weights_path=str(tmp_path / "missing.pth"))


def test_a_file_of_another_model_is_refused_naming_it(hub, tmp_path):
    other = tmp_path / "simplenet.pth"
    torch.save(load_model("SimpleNet").state_dict(), other)
    with pytest.raises(PretrainedWeightsError, match="missing key") as err:
        load_model("resnet50", weights_path=str(other))
    assert str(other) in str(err.value)


def test_offline_train_main_stops_with_what_was_tried(hub, one_step_root, tmp_path, capsys):
    code = run_cli(train_main.main, train_argv(one_step_root, tmp_path, "-m", "efficientnet_b4"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    url = torchvision.models.EfficientNet_B4_Weights.IMAGENET1K_V1.url
    for needle in (
        "efficientnet_b4",
        str(hub),
        Path(url).name,
        url,
        "XCEPTION_NO_DOWNLOAD",
        "--no_pretrained",
    ):
        assert needle in err, needle
    assert not (tmp_path / "ck").exists()


def test_check_weights_for_each_model(hub, imagenet_file, one_step_root, tmp_path, capsys):
    def check(*flags) -> dict:
        assert run_cli(train_main.main, ["--check_weights", *flags]) == 0
        return json.loads(capsys.readouterr().out)

    assert check("-m", "SimpleNet")["found"] is False
    assert check("-m", "XceptionBased")["found"] is False  # nothing in the empty cache, offline
    result = check("-m", "efficientnet_b4")
    assert result["found"] is False and "--no_pretrained" in result["error"]
    path, _ = imagenet_file
    assert check("-m", "resnet50", "--pretrained_weights", str(path)) == {
        "found": True,
        "source": str(path),
        "origin": "the --pretrained_weights argument",
    }


@pytest.fixture
def served(tmp_path, imagenet_file):
    """``served(name)``: the URL of the ResNet-50 file under ``name`` on a local HTTP server."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def serve(name: str) -> str:
        (folder / name).write_bytes(imagenet_file[0].read_bytes())
        return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    yield serve
    server.shutdown()


def test_download_into_the_cache_checks_the_hash(hub, imagenet_file, served, monkeypatch):
    monkeypatch.delenv("XCEPTION_NO_DOWNLOAD")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    digest = hashlib.sha256(imagenet_file[0].read_bytes()).hexdigest()
    url = served(f"resnet50-{'0' * 8}.pth")  # a name whose hash prefix the file does not have
    monkeypatch.setattr(torchvision_weights, "weights_url", lambda spec: url)
    with pytest.raises(PretrainedWeightsError, match="download failed"):
        load_model("resnet50")
    url = served(f"resnet50-{digest[:8]}.pth")
    model = load_model("resnet50")
    assert model.weights_info.origin == f"downloaded from {url}"
    assert (hub / Path(url).name).is_file()
    assert_backbone_from(model, imagenet_file[1])
