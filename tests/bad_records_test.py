"""Bad latent records never reach a step (issue: faults at scale, item 4).

A damaged ArrayRecord chunk, a latent with NaN or inf values, a record of the
wrong size and a stats file made for other latents each stop the input with
one line naming the file and the record (faults.BadRecordError, exit code 65
from `ilct_jax.main`), or, with data.bad_records=skip, are replaced by the
next good record and counted.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ilct_jax import faults, parallel
from ilct_jax.data import latents, pipeline
from tests import cluster
from tests.pipeline_test import CHUNK, SHAPE, _write_latents

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tiny_config, latent_dir, policy="error"):
  c = tiny_config
  c.data.source, c.data.latent_dir = "latents", str(latent_dir)
  c.data.image_size, c.data.channels = 8, 4
  c.data.bad_records = policy
  c.vae.path = ""
  return c


def _shard(latent_dir, j: int) -> str:
  return str(latent_dir / latents.shard_name("train", j, 4))


def _corrupt_record(latent_dir, stored, example: int) -> None:
  """Flips a byte inside the chunk of `example` (one record per chunk)."""
  path = _shard(latent_dir, example // CHUNK)
  raw = bytearray(open(path, "rb").read())
  at = bytes(raw).index(stored[example].tobytes()) + 17
  raw[at] ^= 0xFF
  open(path, "wb").write(bytes(raw))


def _rewrite_shard(latent_dir, j: int, records: list[bytes]) -> None:
  from array_record.python import array_record_module

  writer = array_record_module.ArrayRecordWriter(
    _shard(latent_dir, j), "group_size:1,uncompressed"
  )
  for r in records:
    writer.write(r)
  writer.close()


def _read_all(config) -> np.ndarray:
  array = latents.open_latents(config)
  return np.concatenate([array[np.arange(i, i + 4)] for i in range(0, 52, 4)])


def _one_line(e) -> str:
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_a_corrupted_chunk_names_its_file_and_record(tiny_config, tmp_path):
  stored = _write_latents(str(tmp_path))
  _corrupt_record(tmp_path, stored, 21)  # Record 5 of chunk 1.
  config = _config(tiny_config, tmp_path)
  with pytest.raises(faults.BadRecordError) as e:
    _read_all(config)
  msg = _one_line(e)
  assert msg.startswith(
    f"bad latent record 5 of {_shard(tmp_path, 1)} (example 21): its chunk "
    "fails ArrayRecord's hash check"
  ), msg
  assert "data.bad_records=skip" in msg
  assert faults.classify(e.value).code == faults.EXIT_BAD_DATA == 65


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_latent_with_nan_or_inf_names_its_file_and_record(
  tiny_config, tmp_path, value
):
  stored = _write_latents(str(tmp_path))
  bad = stored[36].copy()
  bad[3, 2, 1] = value
  records = [stored[i].tobytes() for i in range(32, 48)]
  records[4] = bad.tobytes()
  _rewrite_shard(tmp_path, 2, records)  # Moments (and so stats) unchanged.
  with pytest.raises(faults.BadRecordError) as e:
    _read_all(_config(tiny_config, tmp_path))
  assert _one_line(e).startswith(
    f"bad latent record 4 of {_shard(tmp_path, 2)} (example 36): it holds "
    "NaN or inf values"
  )


def test_a_record_of_the_wrong_size_names_its_file_and_record(
  tiny_config, tmp_path
):
  stored = _write_latents(str(tmp_path))
  records = [stored[i].tobytes() for i in range(16)]
  records[9] = records[9][:-12]
  _rewrite_shard(tmp_path, 0, records)
  with pytest.raises(faults.BadRecordError) as e:
    _read_all(_config(tiny_config, tmp_path))
  assert _one_line(e).startswith(
    f"bad latent record 9 of {_shard(tmp_path, 0)} (example 9): it has 1012 "
    "bytes, a latent has 1024"
  )


def test_stats_that_disagree_with_the_latents_are_refused(
  tiny_config, tmp_path
):
  _write_latents(str(tmp_path))
  config = _config(tiny_config, tmp_path)
  mean, std = latents.load_stats(latents.stats_path(config), SHAPE)
  latents.open_latents(config)  # The encoder's own stats agree.
  other = tmp_path / "other_stats.npz"
  latents.save_stats(str(other), mean + 0.05 * std, std)
  config.data.stats_path = str(other)
  with pytest.raises(faults.BadRecordError) as e:
    latents.open_latents(config)
  msg = _one_line(e)
  assert msg.startswith(
    f"stats file {other} disagrees with the latents of {tmp_path}: its mean "
    "is off by up to 0.05 std"
  ), msg
  latents.save_stats(str(other), mean, std * 1.01)
  with pytest.raises(faults.BadRecordError, match=r"std by up to 1%"):
    latents.open_latents(config)


def test_skip_replaces_bad_records_deterministically_and_counts_them(
  tiny_config, tmp_path
):
  stored = _write_latents(str(tmp_path))
  _corrupt_record(tmp_path, stored, 21)
  records = [stored[i].tobytes() for i in range(32, 48)]
  bad = stored[36].copy()
  bad[0, 0, 0] = np.nan
  records[4] = bad.tobytes()
  _rewrite_shard(tmp_path, 2, records)
  config = _config(tiny_config, tmp_path, policy="skip")
  got = latents.open_latents(config).stored(np.arange(len(stored)))
  want = stored.copy()
  want[21], want[36] = stored[22], stored[37]  # The next good records.
  np.testing.assert_array_equal(got, want)
  # Through the training input: every batch of an epoch on one device.
  mesh = parallel.make_mesh(jax.devices()[:1])
  batches = pipeline.create_iterator(config, mesh, start_step=0)
  try:
    for _ in range(len(stored) // config.train.batch_size):
      assert np.isfinite(np.asarray(next(batches))).all()
    assert batches.skipped() == 2
  finally:
    batches.close()


def test_main_stops_with_one_line_and_exit_code_65(tmp_path):
  """The real program: a NaN latent stops it before a step trains on it."""
  stored = _write_latents(str(tmp_path / "latents"))
  records = [stored[i].tobytes() for i in range(16)]
  bad = stored[3].copy()
  bad[1, 1, 1] = np.inf
  records[3] = bad.tobytes()
  _rewrite_shard(tmp_path / "latents", 0, records)
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "ilct_jax.main",
      "--config=configs/tiny.py",
      f"--workdir={tmp_path / 'run'}",
      "--config.data.source=latents",
      f"--config.data.latent_dir={tmp_path / 'latents'}",
      "--config.data.image_size=8",
      "--config.data.channels=4",
      "--config.data.num_examples=52",
      "--config.train.num_steps=40",
      "--config.vae.path=",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=cluster.env(1),  # CPU, this session's compile cache.
  )
  assert out.returncode == faults.EXIT_BAD_DATA, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if "error: " in line]
  assert len(errors) == 1 and errors[0].endswith(
    f"error: bad latent record 3 of {_shard(tmp_path / 'latents', 0)} "
    "(example 3): it holds NaN or inf values; re-encode the dataset with "
    "ilct_jax.data.encode --overwrite, or set data.bad_records=skip to train "
    "without it"
  ), errors
  assert "Traceback" not in out.stderr
