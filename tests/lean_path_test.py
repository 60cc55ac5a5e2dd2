"""Opening a run needs no TensorFlow, tfds, ott or clu (issue: lean path).

A subprocess blocks those packages (any import of them raises) and then
imports the modules a notebook or `--mode=sample` uses, opens the tiny run
with `runs.load_run`, samples it with both samplers and runs
`python -m ilct_jax.main --mode=sample` itself.
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap

BLOCKED = ("tensorflow", "tensorflow_datasets", "ott", "clu")

_BLOCKER = textwrap.dedent(
  f"""
  import importlib.abc, importlib.machinery, sys
  BLOCKED = {BLOCKED!r}
  class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
      raise ImportError(f"blocked for this test: {{spec.name}}")
    def exec_module(self, module):
      pass
  class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] in BLOCKED:  # Found, but importing it fails.
        return importlib.machinery.ModuleSpec(name, Refuse())
      return None
  sys.meta_path.insert(0, Blocker())
  """
)


def _run(code: str, cwd: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "ILCT_HUGE_PAGES": "0"}
  return subprocess.run(
    [sys.executable, "-c", _BLOCKER + textwrap.dedent(code)],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_open_and_sample_a_run_without_tf_tfds_ott_clu(run_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  r = _run(
    f"""
    import sys
    from ilct_jax import runs, sampling
    from ilct_jax.lab import inspect_run
    from ilct_jax.models import vae, autoencoder
    from ilct_jax.evaluation import write_samples
    opened = runs.load_run({workdir!r}, what="ema")
    out = write_samples.sample_images(opened.config, opened.params, 4)
    assert set(out) == set(sampling.samplers(opened.config)), out.keys()
    sys.argv = ["main", "--workdir={workdir}", "--mode=sample",
                "--config.sample.num=4"]
    from ilct_jax import main
    main.define_flags()
    try:
      from absl import app
      app.run(main.main)
    except SystemExit as e:
      assert not e.code, e.code
    heavy = [m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}]
    print("OK", opened.step, heavy)
    """,
    str(tmp_path),
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "OK 6 []" in r.stdout
  assert os.listdir(os.path.join(workdir, "samples"))


def _requirement_names(lines) -> set[str]:
  names = set()
  for line in lines:
    line = line.split("#")[0].strip()
    if line:
      name = re.split(r"[<>=!\[; ]", line)[0]
      names.add(name.lower().replace("_", "-"))
  return names


def test_notebook_requirements_cover_the_lean_path(run_dir, tmp_path):
  """notebooks/requirements.txt (what the Colab cell installs) lists every
  direct dependency of ilct_jax that the notebook's path imports, each with
  setup.py's pin, and none of the blocked packages."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  lines = open(os.path.join(root, "notebooks", "requirements.txt")).read()
  listed = _requirement_names(lines.splitlines())
  setup_text = open(os.path.join(root, "setup.py")).read()
  for line in lines.splitlines():
    line = line.split("#")[0].strip()
    if line:
      assert f'"{line}"' in setup_text, f"{line} is not setup.py's pin"
  r = _run(
    f"""
    import importlib.metadata as md, re, sys
    import jax, matplotlib
    matplotlib.use("Agg")
    from ilct_jax import parallel, runs, sampling
    from ilct_jax.lab import analysis
    from ilct_jax.lab import inspect_run as run_inspect
    from ilct_jax.evaluation import write_samples, image_files
    from ilct_jax.models import autoencoder, unet, vae
    mesh = parallel.make_mesh(jax.devices()[:1])
    run = runs.load_run({run_dir!r}, what="ema", mesh=mesh)
    run_inspect.format_summary(run_inspect.summarize({run_dir!r}, num=0))
    write_samples.sample_images(run.config, run.params, 2)
    dists = md.packages_distributions()
    tops = {{m.split(".")[0] for m in list(sys.modules)}}
    used = {{d for t in tops for d in dists.get(t, [])}}
    direct = {{re.split(r"[<>=!\\[; ]", r)[0] for r in md.requires("ilct_jax")
              if "extra ==" not in r}}
    norm = lambda n: n.lower().replace("_", "-")
    both = {{norm(d) for d in used}} & {{norm(d) for d in direct}}
    print("USED", sorted(both))
    """,
    str(tmp_path),
  )
  assert r.returncode == 0, r.stderr[-3000:]
  used = set(eval(r.stdout.split("USED ", 1)[1].strip()))
  print("direct dependencies the notebook path imports:", sorted(used))
  assert {"jax", "flax", "orbax-checkpoint"} <= used
  assert used <= listed, f"not in notebooks/requirements.txt: {used - listed}"
  assert not listed & {
    "tensorflow-cpu",
    "tensorflow-datasets",
    "ott-jax",
    "clu",
  }
