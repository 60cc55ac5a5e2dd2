"""Checksums and finiteness of pytrees (what checkpoints verify)."""

import jax
import jax.numpy as jnp
import numpy as np

from ilct_jax import integrity, parallel


def _tree():
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=(8,)), jnp.bfloat16),
    "n": jnp.arange(5, dtype=jnp.int32),
    "ok": jnp.array([True, False]),
  }


def test_checksum_is_the_bits_mod_2_32_whatever_the_sharding():
  tree = _tree()
  sums = integrity.checksums(tree)
  assert sorted(sums) == ["b", "n", "ok", "w"]
  # By hand: words as uint32, sum and position-weighted sum, mod 2^32.
  w = np.asarray(tree["w"]).view(np.uint32).ravel().astype(np.uint64)
  i = np.arange(w.size, dtype=np.uint64)
  plain = int(w.sum() % 2**32)
  weighted = int((w * ((i * 2654435761 + 1) % 2**32)).sum() % 2**32)
  assert sums["w"] == f"{plain:08x}{weighted:08x}"
  # Sharded over 8 devices (rows split), replicated on 1: same sums.
  mesh = parallel.make_mesh()
  sharded = jax.device_put(tree["w"], parallel.batch_sharding(mesh))
  assert integrity.checksums({"w": sharded})["w"] == sums["w"]


def test_checksum_sees_one_flipped_bit_and_a_swap():
  tree = _tree()
  base = integrity.checksums(tree)["w"]
  bits = np.asarray(tree["w"]).view(np.uint32).copy()
  bits[3, 2] ^= 1 << 7
  flipped = jnp.asarray(bits.view(np.float32))
  assert integrity.checksums({"w": flipped})["w"] != base
  swapped = np.asarray(tree["w"]).copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # Same words, other places.
  assert integrity.checksums({"w": jnp.asarray(swapped)})["w"][:8] == base[:8]
  assert integrity.checksums({"w": jnp.asarray(swapped)})["w"] != base


def test_verify_names_the_bad_leaf_and_checks_compile_once():
  tree = _tree()
  sums = integrity.checksums(tree)
  assert integrity.verify(tree, sums) is None
  assert integrity.verify(tree, None) is None  # Old checkpoint: no sums.
  bad = dict(tree, w=tree["w"].at[0, 0].set(jnp.nan))
  assert integrity.verify(bad, None) == "non-finite values in w"
  assert integrity.verify(bad, sums).startswith("checksum mismatch in w")
  size = integrity._sums._cache_size(), integrity._all_finite._cache_size()
  integrity.checksums(tree), integrity.all_finite(tree)  # Same structure.
  assert (
    integrity._sums._cache_size(),
    integrity._all_finite._cache_size(),
  ) == size
