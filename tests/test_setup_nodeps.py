"""scripts/setup_env.sh installs requirements-nodeps.txt (facenet-pytorch, whose own torch pin is
stale) with --no-deps, after the requirements file, and again only when it changed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stale_pin_wheel(folder) -> str:
    """A wheel that asks for a package no index has: it installs only with --no-deps."""
    path = os.path.join(folder, "stale_pin-1.0-py3-none-any.whl")
    info = "stale_pin-1.0.dist-info"
    files = {
        "stale_pin/__init__.py": "VERSION = '1.0'\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: stale-pin\nVersion: 1.0\n"
        "Requires-Dist: no-such-package-anywhere<0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_repository_pins_facenet_without_its_dependencies():
    with open(os.path.join(ROOT, "requirements-nodeps.txt")) as handle:
        pins = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    assert pins == ["facenet-pytorch==2.6.0"]
    from lib.face_detectors import FACENET_INSTALL, FACENET_VERSION

    assert FACENET_VERSION == "2.6.0" and "--no-deps" in FACENET_INSTALL
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        assert any(line.startswith("requests") for line in handle)  # what facenet-pytorch imports


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_env_installs_the_nodeps_file_without_dependencies(tmp_path):
    (tmp_path / "reqs.txt").write_text("# nothing to install\n")
    wheel = stale_pin_wheel(tmp_path)
    (tmp_path / "requirements-nodeps.txt").write_text(f"{wheel}\n")
    script = (
        f"set -euo pipefail; source {shlex.quote(ROOT)}/scripts/setup_env.sh; "
        f"setup_env {shlex.quote(str(tmp_path / 'reqs.txt'))}"
    )
    env = {**os.environ, "VENV": str(tmp_path / "venv"), "PYTHON": sys.executable, "PIP_NO_INDEX": "1"}

    def setup() -> str:
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr + done.stdout

    assert "installing reqs.txt" in setup()
    python = str(tmp_path / "venv" / "bin" / "python")
    done = subprocess.run(
        [python, "-c", "import stale_pin; print(stale_pin.VERSION)"], capture_output=True, text=True
    )
    assert done.stdout.strip() == "1.0"  # installed although its dependency exists nowhere
    assert "installing" not in setup()
    (tmp_path / "requirements-nodeps.txt").write_text(f"# changed\n{wheel}\n")
    assert "installing reqs.txt" in setup()
