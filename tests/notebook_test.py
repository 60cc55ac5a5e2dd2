"""notebooks/inspect_checkpoint.ipynb runs where people open it, and lints.

The notebook is executed as Jupyter runs it: a python3 kernel whose working
directory is notebooks/, on a tiny run trained in the test (6 steps) that it
finds through ILCT_WORKDIR. Every cell must run, the summary must name the
run's checkpoints, and the figures (curves, Fig. 4, sample grids) must come
out as PNG images. ruff must accept the notebook as it accepts the code.
"""

import os
import subprocess
import sys

import pytest

from tests import cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "inspect_checkpoint.ipynb")


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs)


def test_notebook_runs_on_a_trained_run(run_dir, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  nbformat = pytest.importorskip("nbformat")
  # The kernel compiles as this session does, with its compile cache.
  for key, value in cluster.env(devices=1, ILCT_WORKDIR=run_dir).items():
    monkeypatch.setenv(key, value)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells), "commit it unexecuted"
  client = nbclient.NotebookClient(
    nb,
    kernel_name="python3",
    timeout=600,
    resources={"metadata": {"path": os.path.join(REPO, "notebooks")}},
  )
  client.execute()  # Raises CellExecutionError naming the failing cell.
  code = [c for c in nb.cells if c.cell_type == "code"]
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors
  text = "\n".join(_text(c) for c in code)
  assert f"{run_dir}: step 6 of 6, EMA 0.9" in text
  assert "checkpoints: 3, 6 (restored step 6 of 6 total steps)" in text
  assert "  data.source: digits (latents)" in text  # Found configs/default.py.
  assert "Given directory is read only" not in text  # Quiet logs.
  pngs = {
    i: sum("image/png" in o.get("data", {}) for o in c.outputs)
    for i, c in enumerate(code)
  }
  grids = [i for i, c in enumerate(code) if "imshow" in c.source]
  assert len(grids) == 1 and pngs[grids[0]] == 1
  assert sum(pngs.values()) == 3  # Curves, Fig. 4, grids.


def _ruff(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "ruff", *args, NOTEBOOK],
    cwd=REPO,
    capture_output=True,
    text=True,
  )


def test_ruff_accepts_the_notebook():
  # A path given explicitly is checked even while pyproject.toml excludes
  # notebooks/ from `ruff check .`.
  for args in (("check",), ("format", "--check")):
    proc = _ruff(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_colab_urls_are_the_declared_home():
  """The badge and the clone URL are setup.py's URL (no placeholder)."""
  sys.path.insert(0, os.path.join(REPO, "tools"))
  try:
    import set_repo_url
  finally:
    sys.path.pop(0)
  url = set_repo_url.declared_url()
  text = open(NOTEBOOK).read()
  assert set_repo_url.rewrite(text, url) == text, (
    f"the notebook's URLs are not setup.py's {url}: run "
    "python tools/set_repo_url.py"
  )
  assert f"github/{url.removeprefix('https://github.com/')}/blob/" in text
  assert f'REPO_URL = \\"{url}\\"' in text and "ORG/REPO" not in text
  # The check can fail: another home is written over it.
  other = set_repo_url.rewrite(text, "https://github.com/a/b")
  assert other != text and "github/a/b/blob/" in other
