"""Tests of xception_weights.py: weight formats, weight discovery, safe loading and downloads.

Nothing here touches the network: downloads are disabled (XCEPTION_NO_DOWNLOAD=1) and TORCH_HOME
points into tmp_path, except in the tests that serve files from a local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib import xception_weights
from lib.xception_weights import (
    WeightsMirror,
    XceptionWeightsError,
    load_xception_weights,
)
from xception import Xception, build_xception_backbone

KNOWN_FILES = ("xception-c0a72b38.pth.tar", "xception-43020ad28.pth", "xception-b5690688.pth")
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No downloads, an empty torch hub dir in tmp_path, no XCEPTION_WEIGHTS."""
    monkeypatch.setenv("XCEPTION_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("XCEPTION_WEIGHTS", raising=False)
    assert Path(torch.hub.get_dir()).is_relative_to(tmp_path), "torch hub dir is not isolated"
    return Path(torch.hub.get_dir()) / "checkpoints"


@pytest.fixture(scope="module")
def source_model():
    """A random model whose BatchNorm statistics are not the defaults, in eval mode."""
    torch.manual_seed(0)
    model = Xception()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def weights_file(source_model, module_tmp):
    """source_model's state dict saved once as a plain file (fc classifier)."""
    path = module_tmp("weights") / "source.pth"
    torch.save(source_model.state_dict(), path)
    return path


def outputs(model, image):
    model.eval()
    with torch.no_grad():
        return model(image)


def assert_same_outputs(model, source_model, image):
    torch.testing.assert_close(outputs(model, image), outputs(source_model, image), rtol=0, atol=0)


def fresh_model():
    torch.manual_seed(123)
    return Xception()


# ----------------------------------------------------------------------------------------------
# Weight formats
# ----------------------------------------------------------------------------------------------


def _plain(sd):
    return sd


def _last_linear(sd):
    return {k.replace("fc.", "last_linear.", 1) if k.startswith("fc.") else k: v for k, v in sd.items()}


def _pointwise_2d(sd):
    return {k: v.flatten(1) if k.endswith("pointwise.weight") else v for k, v in sd.items()}


def _wrapped(sd):
    return {"state_dict": sd, "epoch": 12, "arch": "xception", "best_prec1": 79.0}


def _model_wrapped(sd):
    return {"model": sd, "optimizer": {"lr": 0.1}}


def _no_num_batches_tracked(sd):
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def _module_prefix(sd):
    return {"module." + k: v for k, v in sd.items()}


def _old_cadene_file(sd):
    """Everything at once, as in the oldest circulating files."""
    return _module_prefix(_no_num_batches_tracked(_pointwise_2d(_last_linear(sd))))


FORMATS = {
    "plain_fc": (_plain, "xception.pth", {}),
    "last_linear": (_last_linear, "xception-43020ad28.pth", {}),
    "pointwise_2d": (_pointwise_2d, "xception-b5690688.pth", {}),
    # Old-style (non-zip) serialisation, like the original .pth.tar.
    "pth_tar_wrapper": (_wrapped, "xception-c0a72b38.pth.tar", {"_use_new_zipfile_serialization": False}),
    "model_wrapper": (_model_wrapped, "checkpoint.pt", {}),
    "no_num_batches_tracked": (_no_num_batches_tracked, "xception.pth", {}),
    "module_prefix": (_module_prefix, "xception.pth", {}),
    "all_quirks": (_old_cadene_file, "xception.pth", {}),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_load_format(fmt, source_model, image, tmp_path):
    convert, name, save_kwargs = FORMATS[fmt]
    path = tmp_path / name
    torch.save(convert(source_model.state_dict()), path, **save_kwargs)

    model = fresh_model()
    info = load_xception_weights(model, path)

    assert info.source == str(path) and info.classifier_loaded
    assert_same_outputs(model, source_model, image)
    if fmt != "plain_fc":
        assert info.adaptations, "format fixes should be reported"


def test_load_from_a_state_dict_object(source_model, image):
    model = fresh_model()
    sd = _last_linear(source_model.state_dict())
    before = dict(sd)
    load_xception_weights(model, sd)
    assert_same_outputs(model, source_model, image)
    assert sd.keys() == before.keys(), "the caller's dict must not be modified"


def _headless(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def test_headless_file_accepted_only_when_allowed(source_model, image, tmp_path, capsys):
    path = tmp_path / "headless.pth"
    torch.save(_headless(source_model.state_dict()), path)

    with pytest.raises(XceptionWeightsError, match="allow_missing_classifier") as err:
        load_xception_weights(fresh_model(), path)
    assert "fc.weight" in str(err.value)

    model = fresh_model()
    fc_before = model.fc.weight.detach().clone()
    info = load_xception_weights(model, path, allow_missing_classifier=True)
    assert not info.classifier_loaded
    assert torch.equal(model.fc.weight, fc_before)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().features(image), source_model.features(image), rtol=0, atol=0)
    note = capsys.readouterr().err
    assert "no usable classifier" in note and str(path) in note


def test_headless_file_through_build(source_model, tmp_path):
    path = tmp_path / "headless.pth"
    torch.save(_headless(source_model.state_dict()), path)
    with pytest.raises(XceptionWeightsError):
        build_xception_backbone(pretrained=True, weights_path=path)
    model = build_xception_backbone(pretrained=True, weights_path=path, allow_missing_classifier=True)
    assert not model.weights_info.classifier_loaded


def test_file_classifier_ignored_when_model_has_another_head(source_model, image, tmp_path):
    """XceptionBased-style model (fc replaced by an MLP) loading a 1000-class file."""
    path = tmp_path / "xception-43020ad28.pth"
    torch.save(_last_linear(source_model.state_dict()), path)

    def with_mlp_head():
        model = fresh_model()
        model.fc = torch.nn.Sequential(torch.nn.Linear(2048, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
        return model

    with pytest.raises(XceptionWeightsError, match=r"fc\.0\.weight"):
        load_xception_weights(with_mlp_head(), path)
    model = with_mlp_head()
    info = load_xception_weights(model, path, allow_missing_classifier=True)
    assert not info.classifier_loaded
    with torch.no_grad():
        torch.testing.assert_close(model.eval().features(image), source_model.features(image), rtol=0, atol=0)


def test_mismatched_keys_are_listed(source_model, tmp_path):
    sd = source_model.state_dict()
    sd["extra.weight"] = torch.zeros(3)
    del sd["block5.rep.4.pointwise.weight"]
    sd["conv1.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    model = fresh_model()
    before = model.conv2.weight.detach().clone()
    with pytest.raises(XceptionWeightsError) as err:
        load_xception_weights(model, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "block5.rep.4.pointwise.weight" in msg and "extra.weight" in msg
    assert "conv1.weight (16, 3, 3, 3) vs (32, 3, 3, 3)" in msg
    assert torch.equal(model.conv2.weight, before), "nothing may be loaded from a bad file"


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "junk.pth"
    torch.save({"epoch": 3, "note": "no weights here"}, path)
    with pytest.raises(XceptionWeightsError, match="does not contain an Xception state dict"):
        load_xception_weights(fresh_model(), path)


# ----------------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------------


class _CreatesMarker:
    """Unpickling this calls open(marker, "a"), which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "a"))


def test_pickled_code_is_never_run(source_model, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "xception-evil.pth"
    torch.save({"state_dict": source_model.state_dict(), "extra": _CreatesMarker(marker)}, path)

    # The payload is live: the file's pickle calls open() (read statically, never unpickled),
    # and that call creates the marker.
    from conftest import pickled_calls

    assert (open.__module__, "open") in pickled_calls(path)
    function, args = _CreatesMarker(marker).__reduce__()
    function(*args).close()
    assert marker.exists()
    marker.unlink()

    with pytest.raises(XceptionWeightsError) as err:
        load_xception_weights(fresh_model(), path)
    assert str(path) in str(err.value) and "weights_only=True" in str(err.value)
    assert not marker.exists()

    with pytest.raises(XceptionWeightsError):
        build_xception_backbone(pretrained=True, weights_path=path)
    assert not marker.exists()


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "xception-43020ad28.pth"
    path.write_text("<html><body>404 Not Found</body></html>")
    with pytest.raises(XceptionWeightsError, match="Could not read") as err:
        load_xception_weights(fresh_model(), path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------------------------
# Discovery order
# ----------------------------------------------------------------------------------------------


def _link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


def test_not_pretrained_looks_nothing_up(monkeypatch, tmp_path):
    monkeypatch.setenv("XCEPTION_WEIGHTS", str(tmp_path / "does-not-exist.pth"))
    model = build_xception_backbone(pretrained=False, weights_path=tmp_path / "nope.pth")
    assert model.weights_info is None


def test_explicit_path_beats_env_and_cache(
    weights_file, source_model, image, monkeypatch, tmp_path, isolated_env
):
    arg = _link(weights_file, tmp_path / "arg.pth")
    env = _link(weights_file, tmp_path / "env.pth")
    _link(weights_file, isolated_env / KNOWN_FILES[0])
    monkeypatch.setenv("XCEPTION_WEIGHTS", str(env))

    model = build_xception_backbone(pretrained=True, weights_path=arg)
    assert model.weights_info.source == str(arg)
    assert "argument" in model.weights_info.origin
    assert_same_outputs(model, source_model, image)


def test_env_beats_cache(weights_file, monkeypatch, tmp_path, isolated_env):
    env = _link(weights_file, tmp_path / "env.pth")
    _link(weights_file, isolated_env / KNOWN_FILES[1])
    monkeypatch.setenv("XCEPTION_WEIGHTS", str(env))
    model = build_xception_backbone(pretrained=True)
    assert model.weights_info.source == str(env)
    assert "XCEPTION_WEIGHTS" in model.weights_info.origin


@pytest.mark.parametrize("name", KNOWN_FILES)
def test_cache_found_under_each_known_name(name, weights_file, isolated_env):
    cached = _link(weights_file, isolated_env / name)
    model = build_xception_backbone(pretrained=True)
    assert model.weights_info.source == str(cached)
    assert "cache" in model.weights_info.origin


def test_missing_explicit_path_is_an_error(weights_file, monkeypatch, tmp_path, isolated_env):
    _link(weights_file, isolated_env / KNOWN_FILES[0])  # must not be used as a fallback
    missing = tmp_path / "no" / "such.pth"
    with pytest.raises(XceptionWeightsError, match="not found") as err:
        build_xception_backbone(pretrained=True, weights_path=missing)
    assert str(missing) in str(err.value)

    monkeypatch.setenv("XCEPTION_WEIGHTS", str(missing))
    with pytest.raises(XceptionWeightsError, match="XCEPTION_WEIGHTS") as err:
        build_xception_backbone(pretrained=True)
    assert str(missing) in str(err.value)


# ----------------------------------------------------------------------------------------------
# Nothing available / downloads
# ----------------------------------------------------------------------------------------------


def _assert_helpful(msg: str, cache_dir: Path):
    assert "--xception_weights" in msg and "--no_pretrained" in msg
    assert "50-60 %" in msg
    assert str(cache_dir) in msg
    for name in KNOWN_FILES:
        assert name in msg


def test_nothing_available_fails_fast_without_downloads(isolated_env):
    start = time.monotonic()
    with pytest.raises(XceptionWeightsError) as err:
        build_xception_backbone(pretrained=True)
    assert time.monotonic() - start < 20
    assert isinstance(err.value, RuntimeError)
    _assert_helpful(str(err.value), isolated_env)
    assert "XCEPTION_NO_DOWNLOAD" in str(err.value)
    for mirror in xception_weights.WEIGHTS_MIRRORS:
        assert mirror.url in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def downloads_enabled(monkeypatch):
    monkeypatch.delenv("XCEPTION_NO_DOWNLOAD")
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def test_unreachable_mirrors_fail_fast(downloads_enabled, monkeypatch, isolated_env):
    port = _closed_port()
    urls = [f"http://127.0.0.1:{port}/xception-43020ad28.pth", f"https://127.0.0.1:{port}/x.pth"]
    monkeypatch.setattr(xception_weights, "WEIGHTS_MIRRORS", [WeightsMirror(u, KNOWN_FILES[1]) for u in urls])
    start = time.monotonic()
    with pytest.raises(XceptionWeightsError) as err:
        build_xception_backbone(pretrained=True)
    assert time.monotonic() - start < 20
    msg = str(err.value)
    _assert_helpful(msg, isolated_env)
    for url in urls:
        assert url in msg
    assert "cannot connect" in msg


def test_default_mirrors_are_listed_when_unreachable(downloads_enabled, monkeypatch, isolated_env):
    """The real mirror list, with the probe stubbed out: no network access at all."""
    monkeypatch.setattr(xception_weights, "_probe", lambda urls: {u: "unreachable (test)" for u in urls})
    with pytest.raises(XceptionWeightsError) as err:
        build_xception_backbone(pretrained=True)
    msg = str(err.value)
    assert "https://www.dropbox.com/s/1hplpzet9d7dv29/xception-c0a72b38.pth.tar?dl=1" in msg
    assert "http://data.lip6.fr/cadene/pretrainedmodels/xception-43020ad28.pth" in msg
    assert "releases/download/v0.1-cadene/xception-43020ad28.pth" in msg
    assert msg.index("dropbox") < msg.index("lip6") < msg.index("v0.1-cadene")


def test_probe_has_a_deadline(monkeypatch):
    """A probe that hangs (e.g. in DNS) is abandoned after PROBE_DEADLINE_S."""
    monkeypatch.setattr(xception_weights, "PROBE_DEADLINE_S", 0.5)
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError("released by the test")  # the abandoned probe thread ends cleanly

    monkeypatch.setattr(xception_weights.socket, "create_connection", hang)
    start = time.monotonic()
    try:
        result = xception_weights._probe(["http://example.invalid/x.pth"])
    finally:
        release.set()
    assert time.monotonic() - start < 5
    assert "no answer" in result["http://example.invalid/x.pth"]


def test_stalled_download_times_out(downloads_enabled, monkeypatch, isolated_env):
    """A server that accepts connections but never answers passes the probe, then times out."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/xception-43020ad28.pth"
        monkeypatch.setattr(xception_weights, "WEIGHTS_MIRRORS", [WeightsMirror(url, KNOWN_FILES[1])])
        monkeypatch.setattr(xception_weights, "DOWNLOAD_SOCKET_TIMEOUT_S", 1.0)
        start = time.monotonic()
        with pytest.raises(XceptionWeightsError) as err:
            build_xception_backbone(pretrained=True)
    assert time.monotonic() - start < 20
    assert f"{url}: download failed" in str(err.value)
    leftovers = list(isolated_env.glob("*")) if isolated_env.exists() else []
    assert leftovers == [], "a failed download must not leave files in the cache"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server on 127.0.0.1 serving the returned directory."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_falls_through_mirrors_into_cache(
    downloads_enabled, http_dir, weights_file, source_model, image, monkeypatch, isolated_env
):
    root, base = http_dir
    (root / "garbage.html").write_text("<html>this link is dead</html>")
    shutil.copy(weights_file, root / "good.pth")
    monkeypatch.setattr(
        xception_weights,
        "WEIGHTS_MIRRORS",
        [
            WeightsMirror(f"{base}/missing.pth", KNOWN_FILES[0]),
            WeightsMirror(f"{base}/garbage.html", KNOWN_FILES[0]),
            WeightsMirror(f"{base}/good.pth", KNOWN_FILES[1]),
        ],
    )

    model = build_xception_backbone(pretrained=True)

    assert model.weights_info.origin == f"downloaded from {base}/good.pth"
    assert_same_outputs(model, source_model, image)
    assert sorted(p.name for p in isolated_env.iterdir()) == [KNOWN_FILES[1]]

    # The next build finds the cached file without any download.
    monkeypatch.setattr(xception_weights, "WEIGHTS_MIRRORS", [])
    assert "cache" in build_xception_backbone(pretrained=True).weights_info.origin
