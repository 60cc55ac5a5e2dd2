"""docs/DESIGN.md's layers are the import graph's (issue: library and lab).

The test reads the numbered layer list of DESIGN.md ("## Layers"), in which
each module of ilct_jax is named once (`models/*` names a subpackage), and
walks every module's imports, function-level ones included: none may import
a module of a higher layer, and every module must be placed.
"""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ilct_jax"


def _layers() -> dict[str, int]:
  text = (ROOT / "docs" / "DESIGN.md").read_text()
  section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
  layers = {}
  for number, body in re.findall(
    r"^(\d+)\. (.*?)(?=^\d+\. |\Z)", section, re.M | re.S
  ):
    for name in re.findall(r"`([\w/*]+)`", body):
      layers[name.removesuffix("/*")] = int(number)
  return layers


def _module_names() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    rel = path.relative_to(PACKAGE).with_suffix("")
    if rel.name == "__init__":
      rel = rel.parent
    if str(rel) != ".":
      out[str(rel)] = path
  return out


def _placed(name: str, layers: dict[str, int]) -> str | None:
  """The DESIGN.md entry that places module `name` (a/b/c: a/b/c, a/b, a)."""
  parts = name.split("/")
  for i in range(len(parts), 0, -1):
    key = "/".join(parts[:i])
    if key in layers:
      return key
  return None


def _imports(path: pathlib.Path) -> set[str]:
  """The ilct_jax modules `path` imports, as 'models/unet'-style names."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "ilct_jax" or node.module.startswith("ilct_jax."):
        base = node.module.removeprefix("ilct_jax").lstrip(".")
        for alias in node.names:
          out.add(
            "/".join(p for p in (base.replace(".", "/"), alias.name) if p)
          )
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("ilct_jax."):
          out.add(alias.name.removeprefix("ilct_jax.").replace(".", "/"))
  return out


def test_every_module_is_placed_and_imports_point_down():
  layers = _layers()
  modules = _module_names()
  unplaced = sorted(m for m in modules if _placed(m, layers) is None)
  assert not unplaced, f"modules DESIGN.md's layers do not place: {unplaced}"
  stale = sorted(
    k
    for k in layers
    if not any(m == k or m.startswith(k + "/") for m in modules)
  )
  assert not stale, (
    f"DESIGN.md's layers name modules that do not exist: {stale}"
  )
  upward = []
  for name, path in sorted(modules.items()):
    own = layers[_placed(name, layers)]
    for target in _imports(path):
      key = _placed(target, layers)
      if key is None:  # `from ilct_jax.x import SOME_NAME`: x is the module.
        key = _placed(target.rsplit("/", 1)[0], layers)
      if key is not None and layers[key] > own:
        upward.append(f"{name} (layer {own}) imports {target} ({layers[key]})")
  assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
  """The walker finds function-level imports (the check can fail)."""
  source = tmp_path / "m.py"
  source.write_text(
    "def f():\n"
    "  from ilct_jax import train\n"
    "  from ilct_jax.models import unet\n"
  )
  assert _imports(source) == {"train", "models/unet"}
  assert _layers()["train"] > _layers()["models"]


def test_the_library_never_imports_the_lab():
  """Only the lab itself imports lab modules; the two command modules run
  theirs by name (runpy) and import nothing of the package."""
  layers = _layers()
  lab_layer = layers["lab"]
  modules = _module_names()
  assert {"lab/preflight", "lab/benchmark", "lab/inspect_run"} <= set(modules)
  for name in ("preflight", "benchmark"):
    assert layers[name] == lab_layer
    assert _imports(modules[name]) == set(), name
    assert f'"ilct_jax.lab.{name}"' in modules[name].read_text()
  library = {m for m in modules if layers[_placed(m, layers)] < lab_layer}
  assert "train" in library and "models/unet" in library
  for name in sorted(library):
    lab = [t for t in _imports(modules[name]) if t.startswith("lab")]
    assert not lab, f"{name} imports the lab: {lab}"


def test_the_data_layer_stands_below_the_core():
  """data/* imports no module of the training core (state, step, setup,
  checkpointing, runs) and sits in a lower layer than they do."""
  layers = _layers()
  for core in ("state", "step", "setup", "checkpointing", "runs"):
    assert layers["data"] < layers[core], core
  modules = _module_names()
  data = [m for m in modules if m.startswith("data")]
  assert len(data) >= 8
  for name in data:
    for target in _imports(modules[name]):
      key = _placed(target, layers) or _placed(target.rsplit("/", 1)[0], layers)
      assert layers[key] < layers["state"] or key == "data", (name, target)
