"""Every module imports beside every other: CLI flags live in __main__ only."""

import pkgutil
import subprocess
import sys

import ilct_jax


def _modules() -> list[str]:
  return sorted(
    m.name for m in pkgutil.walk_packages(ilct_jax.__path__, prefix="ilct_jax.")
  )


def test_all_modules_import_together_in_one_process():
  names = _modules()
  assert "ilct_jax.main" in names and "ilct_jax.lab.benchmark" in names
  assert "ilct_jax.data.encode" in names and len(names) > 40
  code = (
    "import importlib\n"
    f"names = {names!r}\n"
    "for n in names:\n"
    "  importlib.import_module(n)\n"
    "from absl import flags\n"
    "owners = [m for m in flags.FLAGS.flags_by_module_dict()\n"
    "          if 'ilct_jax' in m or m.endswith(('main.py', 'encode.py'))]\n"
    "print(len(names), len(owners))\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  count, owners = map(int, proc.stdout.split())
  assert count == len(names)
  assert owners == 0, "a project module defines absl flags on import"
