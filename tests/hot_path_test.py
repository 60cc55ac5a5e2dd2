"""The hot path (model, losses, coupling, step, sampling) has no TF, and
loads ott-jax only for Sinkhorn pairing (ilct_jax/coupling.py)."""

import subprocess
import sys


def test_hot_path_imports_without_tensorflow():
  code = (
    "import sys\n"
    "import ilct_jax.step, ilct_jax.state, ilct_jax.losses, ilct_jax.coupling\n"
    "import ilct_jax.sampling, ilct_jax.consistency, ilct_jax.models.unet\n"
    "import ilct_jax.lab.benchmark, ilct_jax.models.autoencoder\n"
    "import ilct_jax.models.vae, ilct_jax.parallel, ilct_jax.lab.preflight\n"
    "leaked = sorted(m for m in sys.modules if m.split('.')[0] in\n"
    "                ('tensorflow', 'tensorflow_datasets'))\n"
    "assert not leaked, leaked\n"
    "assert 'ott' not in sys.modules, 'ott-jax loaded without Sinkhorn'\n"
    "import jax, jax.numpy as jnp\n"
    "x = jnp.ones((4, 3)); z = jnp.arange(12.0).reshape(4, 3)\n"
    "exact = lambda a, b: ilct_jax.coupling.assignment(a, b, method='exact')\n"
    "jax.jit(exact)(x, z)\n"
    "assert 'ott' not in sys.modules, 'exact pairing loaded ott-jax'\n"
    "ilct_jax.coupling.assignment(x, z, method='sinkhorn', iterations=10)\n"
    "assert 'ott' in sys.modules\n"
    "print('ok')\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().endswith("ok")
