"""Flaky object storage (issue: faults at scale, item 2).

The GCS emulator of tests/gcs_test.py sits behind tests/flaky_proxy.py on
127.0.0.1, which answers a seeded 4% of requests with 503, resets 1% and
delays 1% by 1-2 s. Through it, a real `ilct_jax.main` run trains with
a gs:// workdir, is stopped by SIGTERM at step 2 (checkpoint), resumes to
the end and samples (`--mode=sample`); the final parameters equal those of
the same run on a local disk, so every injected fault was retried (by
tensorstore for checkpoint arrays, by gcsfs for every other file:
storage.py), and the run's files are where they belong in the bucket (the
TensorBoard writer alone goes to a local folder: tests/gcs_test.py says
why). Then the store goes down for good during a run: it stops with
one line and exit code 74, and its last good checkpoint is intact.
"""

import json
import os
import time
import urllib.parse
import urllib.request

import chex
import jax
import pytest

from ilct_jax import faults, runs
from tests import gcs_test
from tests.cluster import Cluster
from tests.flaky_proxy import FlakyProxy

BUCKET = gcs_test.BUCKET
ARGS = [
  "--config=configs/tiny.py",
  "--config.train.ckpt_every=3",
  # Tensorstore's first wait after a 503 (1 s by default), shorter here.
  "--config.train.storage_initial_delay_s=0.1",
]


@pytest.fixture
def store(tmp_path):
  """(proxy, emulator url, client env) with a bucket, behind the proxy."""
  proxy = FlakyProxy(
    "http://127.0.0.1:1",
    seed=0,
    p_503=0.04,
    p_reset=0.01,
    p_delay=0.01,
    delay_s=(1.0, 2.0),
  )
  server, url = gcs_test._start_emulator(tmp_path / "server.log", proxy.url)
  proxy.target = urllib.parse.urlsplit(url)
  gcs_test.create_bucket(url)
  env = dict(
    gcs_test.client_env(proxy.url), ILCT_TEST_LOCAL_TB=str(tmp_path / "tb")
  )
  try:
    yield proxy, url, env
  finally:
    proxy.close()
    server.kill()
    server.wait()


def _run(tmp_path, name, args, env, timeout=240):
  run = Cluster(tmp_path, name, processes=1, devices=2)
  try:
    run.start(args, timeout, **env)
    codes = run.wait()
    return codes[0], run.output()
  finally:
    run.close()


def _objects(url: str, prefix: str) -> list[str]:
  """Every object name under `prefix`, listed straight from the emulator."""
  names, token = [], ""
  while True:
    query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
    with urllib.request.urlopen(
      f"{url}/storage/v1/b/{BUCKET}/o?{query}", timeout=30
    ) as r:
      page = json.load(r)
    names += [item["name"] for item in page.get("items", [])]
    token = page.get("nextPageToken", "")
    if not token:
      return names


def _open(url: str, workdir: str, **kwargs):
  """runs.load_run here, straight at the emulator (no faults)."""
  before = dict(os.environ)
  os.environ.update(gcs_test.client_env(url))
  gcs_test._reset_clients()
  try:
    return runs.load_run(workdir, **kwargs)
  finally:
    os.environ.clear()
    os.environ.update(before)
    gcs_test._reset_clients()


def test_a_flaky_store_is_retried_and_the_run_ends_equal(store, tmp_path):
  proxy, url, env = store
  workdir = f"gs://{BUCKET}/flaky"
  # The undisturbed run: the same program on a local disk.
  code, out = _run(
    tmp_path, "local", [*ARGS, f"--workdir={tmp_path}/local"], env
  )
  assert code == 0, out
  code, out = _run(
    tmp_path,
    "a",
    [*ARGS, f"--workdir={workdir}"],
    dict(env, ILCT_TEST_FAULT="step:2:TERM"),
  )
  assert code == 75, out
  code, out = _run(tmp_path, "b", [*ARGS, f"--workdir={workdir}"], env)
  assert code == 0 and "Restored checkpoint step 2" in out, out
  code, out = _run(
    tmp_path, "c", [f"--workdir={workdir}", "--mode=sample"], env
  )
  assert code == 0, out
  flaky = dict(proxy.counts)
  print(f"flaky store: {flaky}")
  assert flaky["503"] + flaky["reset"] >= 5, flaky
  objects = _objects(url, "flaky")
  assert "flaky/config.json" in objects
  steps = {
    p.split("/")[2] for p in objects if p.startswith("flaky/checkpoints/")
  }
  assert steps == {"2", "3", "6"}, steps  # 2: the SIGTERM's checkpoint.
  assert any(p.startswith("flaky/checkpoints/6/state/") for p in objects)
  assert "flaky/samples/onestep_step6_ema0.9.png" in objects
  assert not any(p.startswith("gs:") for p in os.listdir(tmp_path))
  assert os.listdir(tmp_path / "tb")  # The one redirected component.
  got = _open(url, workdir, what="params")
  want = runs.load_run(f"{tmp_path}/local", what="params")
  assert got.step == want.step == 6
  chex.assert_trees_all_equal(
    jax.device_get(got.params), jax.device_get(want.params)
  )


def test_a_persistent_outage_stops_with_74_and_keeps_the_checkpoint(
  store, tmp_path
):
  """The store answers every request 503 once checkpoint 3 is committed."""
  proxy, url, env = store
  outage = f"gs://{BUCKET}/outage"
  progress = str(tmp_path / "progress")
  proxy.p_503 = proxy.p_reset = proxy.p_delay = 0.0
  run = Cluster(tmp_path, "outage", processes=1, devices=2)
  try:
    run.start(
      [
        *ARGS,
        f"--workdir={outage}",
        "--config.train.storage_retries=2",
        "--config.train.storage_max_delay_s=1",
      ],
      240,
      ILCT_TEST_STEP_SLEEP="0.5",
      ILCT_TEST_PROGRESS=progress,
      **env,
    )
    run.wait_for(  # orbax's commit file on GCS: step 2 is complete.
      lambda: (
        "outage/checkpoints/3/commit_success.txt"
        in _objects(url, "outage/checkpoints/3/")
      ),
      "the step-3 checkpoint's commit",
    )
    began = time.monotonic()
    proxy.down = True
    code = run.wait()[0]
    seconds = time.monotonic() - began
    out = "\n".join(f.read_text() for f in run.log_dir.glob("*.log"))
  finally:
    run.close()
    proxy.down = False
  errors = [line for line in out.splitlines() if "] error: " in line]
  print(f"outage: exit {code} after {seconds:.0f} s: {errors}")
  assert code == faults.EXIT_STORAGE, out
  assert len(errors) == 1 and "error: storage unreachable under " in errors[0]
  kept = _open(url, outage, what="params")  # Verified against its checksums.
  assert kept.step == 3, kept.step  # The last save that finished.
