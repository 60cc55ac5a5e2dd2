"""Integrity of array pytrees: checksums of their raw bits and finiteness.

Checkpoints record `checksums(state)` when saved and compare them after a
restore (checkpointing.py), so flipped, truncated or swapped bytes in an
array file are caught even when the file still parses. Both checks are
jitted once per tree structure (module-level functions, so a second save
compiles nothing) and run on the devices where the arrays live.
"""

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def _key_name(entry: Any) -> str:
  for attr in ("name", "key", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def leaf_paths(tree: PyTree) -> list[tuple[str, Any]]:
  """(path, leaf) pairs with paths like "params/enc_8x8_conv/kernel".

  Attribute, dict and sequence entries are all written by name or index, so
  a TrainState, the nested dicts/lists orbax reads back and a partial tree
  {"params": ...} name the same array alike.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [("/".join(_key_name(k) for k in p), leaf) for p, leaf in flat]


def _words(x: jax.Array) -> jax.Array:
  """The raw bits of an array as a flat uint32 vector."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).ravel()
  size = x.dtype.itemsize
  if size in (1, 2):
    small = jnp.uint8 if size == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(x, small).astype(jnp.uint32).ravel()
  return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()  # 4 or 8 bytes.


@jax.jit
def _sums(leaves: list[jax.Array]) -> jax.Array:
  """[n, 2] uint32: (sum of words, position-weighted sum) per leaf, mod 2^32.

  Integer sums wrap exactly, whatever the reduction order, so the checksum
  of an array does not depend on its sharding or device count; the weights
  (2654435761 i + 1) make swapped or shifted words count.
  """
  out = []
  for x in leaves:
    w = _words(x)
    i = jnp.arange(w.shape[0], dtype=jnp.uint32)
    weighted = w * (i * jnp.uint32(2654435761) + jnp.uint32(1))
    out.append(
      jnp.stack(
        [jnp.sum(w, dtype=jnp.uint32), jnp.sum(weighted, dtype=jnp.uint32)]
      )
    )
  return jnp.stack(out)


def checksums(tree: PyTree) -> dict[str, str]:
  """{path: 16 hex digits} of every array of `tree` (see `_sums`)."""
  pairs = [(p, x) for p, x in leaf_paths(tree) if hasattr(x, "dtype")]
  if not pairs:
    return {}
  sums = jax.device_get(_sums([x for _, x in pairs]))
  return {p: f"{int(a):08x}{int(b):08x}" for (p, _), (a, b) in zip(pairs, sums)}


@jax.jit
def _all_finite(tree: PyTree) -> jax.Array:
  leaves = [
    x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  if not leaves:
    return jnp.array(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree: PyTree) -> bool:
  """Whether every float of `tree` is finite (one jitted, cached program)."""
  return bool(_all_finite(tree))


def verify(tree: PyTree, saved: dict[str, str] | None) -> str | None:
  """Why `tree` (restored) is damaged, or None if it passes."""
  if saved is not None:
    got = checksums(tree)
    bad = sorted(p for p, c in got.items() if saved.get(p) != c)
    if bad:
      more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
      return f"checksum mismatch in {bad[0]}{more}"
  if not all_finite(tree):
    bad = [p for p, x in leaf_paths(tree) if not all_finite(x)]
    return f"non-finite values in {bad[0] if bad else 'the state'}"
  return None
