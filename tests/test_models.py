"""Parameter counts and shapes of the study's models (docs/design.md#models)."""

from __future__ import annotations

import pytest
import torch

import models
import utils


@pytest.fixture(scope="module")
def xception_based():
    return models.get_xception_based_model(pretrained=False)


def _layer_count(layer: torch.nn.Module) -> int:
    """Independent count: weight + bias sizes from the layer's own shape attributes."""
    if isinstance(layer, torch.nn.Linear):
        return layer.in_features * layer.out_features + layer.out_features
    if isinstance(layer, torch.nn.Conv2d):
        kh, kw = layer.kernel_size
        return layer.out_channels * layer.in_channels // layer.groups * kh * kw + layer.out_channels
    return 0


def test_simplenet_parameter_count_and_layers():
    net = models.SimpleNet()
    assert utils.get_nof_params(net) == 16_901_762
    assert sum(_layer_count(m) for m in net.modules()) == 16_901_762


def test_simplenet_shapes():
    net = models.SimpleNet().eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        a = net.pool(net.relu(net.conv1(x)))
        b = net.pool(net.relu(net.conv2(a)))
        c = net.pool(net.relu(net.conv3(b)))
        assert a.shape[1:] == (6, 125, 125) and b.shape[1:] == (16, 59, 59) and c.shape[1:] == (24, 26, 26)
        assert net(x).shape == (2, 2)


@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (1, 1, 256, 256), (3, 256, 256)])
def test_simplenet_wrong_size_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="256 x 256"):
        models.SimpleNet()(torch.zeros(shape))


def test_xception_based_counts(xception_based):
    assert utils.get_nof_params(xception_based) == 23_128_786
    assert all(p.requires_grad for p in xception_based.parameters())  # nothing frozen
    head = xception_based.fc
    assert utils.get_nof_params(head) == 2_321_834
    assert sum(_layer_count(m) for m in head.modules()) == 2_321_834
    assert 23_128_786 - 22_855_952 == 272_834  # what the head adds over the 1000-class fc
    keys = [k for k in xception_based.state_dict() if k.startswith("fc.")]
    assert keys == [
        "fc.0.weight",
        "fc.0.bias",
        "fc.2.weight",
        "fc.2.bias",
        "fc.4.weight",
        "fc.4.bias",
        "fc.6.weight",
        "fc.6.bias",
    ]


def test_xception_based_output(xception_based):
    xception_based.eval()
    with torch.no_grad():
        out = xception_based(torch.randn(1, 3, 96, 96))
    assert out.shape == (1, 2)


def test_xception_based_loads_imagenet_backbone(tmp_path):
    """pretrained=True with an explicit file loads the backbone; the head stays new."""
    import xception

    source = xception.Xception()
    torch.nn.init.normal_(source.conv1.weight)
    path = tmp_path / "xception-c0a72b38.pth.tar"
    torch.save(source.state_dict(), path)
    model = models.get_xception_based_model(pretrained=True, weights_path=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.block12.skip.weight, source.block12.skip.weight)
    assert isinstance(model.fc, torch.nn.Sequential)


def test_load_model_xception_without_weights_is_clear(monkeypatch, tmp_path):
    import xception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("XCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("XCEPTION_NO_DOWNLOAD", "1")
    with pytest.raises(xception.XceptionWeightsError, match="--no_pretrained"):
        utils.load_model("XceptionBased", pretrained=True)
