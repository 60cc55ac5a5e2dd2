"""Configs from any directory and by short name (ilct_jax/config_files.py)."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from ilct_jax import config_files
from ilct_jax.lab import run_files

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_resolve_paths_and_short_names(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Outside the repository.
  tiny = str(ROOT / "configs" / "tiny.py")
  assert config_files.resolve("tiny") == tiny
  assert config_files.resolve("configs/tiny.py") == tiny
  assert config_files.resolve(tiny) == tiny
  assert config_files.default_path() == str(ROOT / "configs" / "demo.py")
  assert {"celeba", "demo", "tiny", "lsun_church"} <= set(config_files.names())
  with pytest.raises(FileNotFoundError) as e:
    config_files.resolve("celbea")
  assert "--config=celbea: no such file" in str(e.value)
  assert "celeba, " in str(e.value)
  argv = ["prog", "--config=tiny", "--config", "celeba", "--x=configs/a"]
  assert config_files.resolve_argv(argv) == [
    "prog",
    f"--config={tiny}",
    "--config",
    str(ROOT / "configs" / "celeba.py"),
    "--x=configs/a",
  ]
  c = run_files.load_config_file(config_files.resolve("celeba"))
  assert c.train.batch_size == 128  # `from configs import ...` resolved.


def _run(args, cwd, python=sys.executable):
  env = {**os.environ, "PYTHONPATH": ""}
  return subprocess.run(
    [python, *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_sample_from_another_directory(run_dir, tmp_path):
  """--mode=sample with an override and no --config, from outside the repo,
  and with a short-name --config: both run."""
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  here = tmp_path / "elsewhere"
  here.mkdir()
  base = ["-m", "ilct_jax.main", f"--workdir={workdir}", "--mode=sample"]
  r = _run([*base, "--config.sample.num=4"], here)
  assert r.returncode == 0, r.stderr[-2000:]
  r = _run([*base, "--config=tiny", "--config.sample.num=4"], here)
  assert r.returncode == 0, r.stderr[-2000:]
  r = _run([*base, "--config=nope"], here)
  assert r.returncode == 1 and "--config=nope: no such file" in r.stderr


def test_non_editable_install_in_a_fresh_venv(tmp_path):
  """`pip install .` (not -e) into a new virtual environment (dependencies
  from this one, nothing downloaded): configs load from any directory."""
  venv = tmp_path / "venv"
  subprocess.run(
    [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
    check=True,
  )
  py = str(venv / "bin" / "python")
  src = tmp_path / "src"  # A copy: the build writes into its tree.
  shutil.copytree(
    ROOT, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build")
  )
  r = _run(
    [
      "-m",
      "pip",
      "install",
      "-q",
      "--no-deps",
      "--no-build-isolation",
      "--no-index",
      str(src),
    ],
    tmp_path,
    py,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  shutil.rmtree(src)  # Nothing may come from the source tree any more.
  code = (
    "import ilct_jax, configs\n"
    "from ilct_jax import config_files\n"
    "from ilct_jax.lab import run_files\n"
    "c = run_files.load_config_file(config_files.resolve('celeba'))\n"
    "print(ilct_jax.__file__, configs.__file__, c.train.batch_size)\n"
  )
  r = _run(["-c", code], tmp_path, py)
  assert r.returncode == 0, r.stderr[-2000:]
  ilct, configs, batch = r.stdout.split()
  assert ilct.startswith(str(venv)) and configs.startswith(str(venv))
  assert batch == "128"
