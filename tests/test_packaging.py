"""The project's `cycler/` folder must never shadow matplotlib's dependency `cycler`."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import cycler
from diffda.cycler.cli import main as cli
from diffda.core import config, rng
from diffda.core import grid
assert hasattr(cycler, "cycler"), cycler.__file__
assert "site-packages" in cycler.__file__, cycler.__file__
fig, ax = plt.subplots()
ax.plot([0, 1], [1, 0])
print("ok")
"""


def _run(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SNIPPET], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_matplotlib_and_project_import_from_repository_root():
    # `python -c` puts the working directory first on sys.path: the worst case.
    out = _run(ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_matplotlib_and_project_import_elsewhere(tmp_path):
    out = _run(tmp_path)
    assert out.returncode == 0, out.stderr


def test_cli_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "diffda.cycler.cli.main", "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "linear" in out.stdout and "bench" in out.stdout
