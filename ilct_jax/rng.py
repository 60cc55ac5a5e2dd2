"""Named PRNG streams: every random draw of a run comes from one of them.

All randomness derives from `config.seed` (and `eval.seed` for evaluation),
split first by purpose and only then by step or index:

  init    parameter initialisation
  train   the train step: noise, OT pairing, pair indices, dropout
  encode  posterior samples of the latent encoding job (per example)
  sample  sample grids during training and --mode=sample
  eval    FID samples (per sampler and batch)

`stream(seed, name)` is fold_in(key(seed), id of name), and a per-step or
per-index key is fold_in(stream key, k). Keys of two streams are therefore
derived through different first folds and cannot coincide at any step (up to
a hash collision of the threefry PRNG). Before this module the step key
fold_in(key(seed), k) equalled the init key at one step and the encoding key
at step 1.
"""

import jax

from ilct_jax import choices

# Arbitrary distinct constants; never reorder or reuse one (it would change
# every key of a stream and so the results of a seed).
_STREAM_IDS = {
  "init": 0x6E1D7,
  "train": 0x7A41E,
  "encode": 0xE6C0D,
  "sample": 0x5A4B1,
  "eval": 0xE7A15,
}
STREAMS = tuple(_STREAM_IDS)


def stream(seed: int, name: str) -> jax.Array:
  """The base key of stream `name` (one of STREAMS) for `seed`."""
  choices.check("PRNG stream", name, STREAMS)
  return jax.random.fold_in(jax.random.key(seed), _STREAM_IDS[name])


def key_at(seed: int, name: str, k: int | jax.Array) -> jax.Array:
  """Key number `k` (a step or an example index; may be traced) of a stream."""
  return jax.random.fold_in(stream(seed, name), k)
