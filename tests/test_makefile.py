"""The Makefile's install stamp, by dry run (make -n runs nothing): a changed TORCH= reinstalls torch."""

import os
import shutil
import subprocess
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def dry_run(cwd, *args):
    """What `make -n install ARGS` would run (-p: also make's variables)."""
    proc = subprocess.run(
        ["make", "-n", *args, "install"], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    return proc.stdout


def test_install_reinstalls_torch_when_torch_changes(tmp_path):
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(os.path.join(ROOT, name), tmp_path)
    assert 'pip install -q "torch==' in dry_run(tmp_path)  # a fresh clone installs everything
    os.mkdir(tmp_path / ".venv")
    variables = dry_run(tmp_path, "-p").splitlines()
    torch_stamp = next(line.split(" := ")[1] for line in variables if line.startswith("TORCH_STAMP := "))
    (tmp_path / torch_stamp).touch()
    past = time.time() - 10
    os.utime(tmp_path / torch_stamp, (past, past))
    (tmp_path / ".venv" / ".installed").touch()
    assert "pip" not in dry_run(tmp_path)  # installed with the default TORCH: nothing to do
    again = dry_run(tmp_path, "TORCH=torch")
    assert "pip uninstall -q -y torch" in again and 'pip install -q "torch"' in again
    assert "-r requirements.txt" in again  # then the rest, against the new torch
