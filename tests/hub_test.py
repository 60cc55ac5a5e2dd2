"""`convert_vae --hub_id` downloads through huggingface_hub from a local,
hub-shaped server (tests/hub_server.py on 127.0.0.1, HF_ENDPOINT)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from vae_test import _torch_tensors, _write_diffusers

from ilct_jax.models import vae as vae_lib
from ilct_jax.models import vae_files

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture
def hub(tmp_path):
  """(endpoint, repository folder) of a running local hub."""
  folder = tmp_path / "hub"
  folder.mkdir()
  server = subprocess.Popen(
    [sys.executable, str(HERE / "hub_server.py"), str(folder)],
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  try:
    port = int(server.stdout.readline())
    yield f"http://127.0.0.1:{port}", folder
  finally:
    server.kill()
    server.wait()


def test_convert_vae_from_the_hub(hub, tmp_path):
  endpoint, folder = hub
  vae = vae_lib.AutoencoderKL(
    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4
  )
  params = vae_lib.random_params(vae, seed=3)
  _write_diffusers(folder / "org" / "tiny-vae", _torch_tensors(params))
  env = {
    **os.environ,
    "HF_ENDPOINT": endpoint,
    "HF_HOME": str(tmp_path / "hf_home"),
    "HF_HUB_DISABLE_TELEMETRY": "1",
  }
  out = tmp_path / "flax"
  cmd = [
    sys.executable,
    "-m",
    "ilct_jax.models.convert_vae",
    "--hub_id=org/tiny-vae",
    f"--out={out}",
  ]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  loaded_vae, loaded = vae_files.load_vae(str(out))
  assert loaded_vae == vae
  got, want = vae_lib.flatten(loaded), vae_lib.flatten(params)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert json.loads((out / "config.json").read_text())["latent_channels"] == 4
  # A repository the hub does not have: one clear line, exit code 1.
  cmd[3] = "--hub_id=org/missing"
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and "org/missing" in r.stderr.splitlines()[-1]
