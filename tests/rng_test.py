"""Named PRNG streams: distinct keys for every purpose, at every step."""

import jax
import numpy as np
import pytest

from ilct_jax import rng


def _bits(key) -> tuple:
  return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_streams_never_share_a_key_over_many_steps():
  seed, steps = 0, 2000
  seen = {}
  for name in rng.STREAMS:
    base = rng.stream(seed, name)
    seen.setdefault(_bits(base), []).append((name, "base"))
    keys = jax.vmap(lambda k, b=base: jax.random.fold_in(b, k))(
      np.arange(steps)
    )
    for k, bits in enumerate(np.asarray(jax.random.key_data(keys))):
      seen.setdefault(tuple(bits.tolist()), []).append((name, k))
    assert _bits(rng.key_at(seed, name, 7)) == _bits(
      jax.random.fold_in(base, 7)
    )
  clashes = {k: v for k, v in seen.items() if len(v) > 1}
  assert not clashes and len(seen) == len(rng.STREAMS) * (steps + 1)
  # The old scheme collided: fold_in(key(seed), step) at step 1 was the
  # encoding key fold_in(key(seed), 1). The named streams do not.
  old_step_1 = jax.random.fold_in(jax.random.key(seed), 1)
  assert _bits(old_step_1) not in seen


def test_unknown_stream_is_a_clear_error():
  with pytest.raises(ValueError, match="PRNG stream='train2' is unknown"):
    rng.stream(0, "train2")
