"""Tests for ilct_jax.coupling: permutations, optimality, OT groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from scipy.optimize import linear_sum_assignment

from ilct_jax import coupling
from ilct_jax.lab import bench_parts

# Sinkhorn margin (epsilon=0.01, 200 iterations, greedy rounding). Measured on
# 20 random Gaussian 64 x 4096 batches: total cost above the optimum by at
# most 0.20% (mean 0.13%), i.e. at most 5.9% (mean 3.7%) of the cost reduction
# that exact OT achieves over the identity pairing. Asserted with headroom:
_SINKHORN_MAX_REL_GAP = 5e-3
_SINKHORN_MAX_FRACTION_OF_GAIN = 0.15


# Module-level jits so tests with equal shapes share one compilation.
_assign = jax.jit(
  coupling.assignment, static_argnames=("method", "epsilon", "iterations")
)
_pair = jax.jit(
  coupling.pair,
  static_argnames=(
    "method",
    "group_size",
    "mesh",
    "axis",
    "epsilon",
    "iterations",
  ),
)


def _gaussians(seed, shape):
  key_x, key_z = jax.random.split(jax.random.key(seed))
  return jax.random.normal(key_x, shape), jax.random.normal(key_z, shape)


def _cost64(x, z):
  """Exact squared-Euclidean cost matrix in float64 (the oracle's)."""
  xf = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  zf = np.asarray(z, np.float64).reshape(z.shape[0], -1)
  return ((xf[:, None, :] - zf[None, :, :]) ** 2).sum(-1)


def _total(cost, perm):
  return cost[np.arange(cost.shape[0]), np.asarray(perm)].sum()


def _optimum(cost):
  rows, cols = linear_sum_assignment(cost)
  return cost[rows, cols].sum()


def _assert_permutation(perm, n):
  perm = np.asarray(perm)
  assert perm.dtype == np.int32 and perm.shape == (n,)
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))


def _source_rows(paired, z):
  """Index into z of each row of `paired` (rows of z are distinct)."""
  zf = np.asarray(z).reshape(z.shape[0], -1)
  pf = np.asarray(paired).reshape(paired.shape[0], -1)
  match = (pf[:, None, :] == zf[None, :, :]).all(-1)
  assert (match.sum(1) == 1).all(), "a paired row is not a row of z"
  return match.argmax(1)


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_outputs_are_permutations_and_pair_follows_assignment(method):
  x, z = _gaussians(0, (24, 4, 4, 3))  # NHWC, flattened per sample
  perm = _assign(x, z, method=method)
  _assert_permutation(perm, 24)
  paired = _pair(x, z, method=method)
  assert paired.shape == z.shape and paired.dtype == z.dtype
  np.testing.assert_array_equal(np.asarray(paired), np.asarray(z)[perm])
  _assert_permutation(_source_rows(paired, z).astype(np.int32), 24)


def test_none_is_identity():
  x, z = _gaussians(1, (8, 5))
  perm = coupling.assignment(x, z, method="none")
  np.testing.assert_array_equal(np.asarray(perm), np.arange(8))
  assert coupling.pair(x, z, method="none") is z


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_matches_scipy_64x4096(seed):
  x, z = _gaussians(seed, (64, 4096))
  perm = _assign(x, z, method="exact")
  _assert_permutation(perm, 64)
  cost = _cost64(x, z)
  np.testing.assert_allclose(_total(cost, perm), _optimum(cost), rtol=1e-9)


def test_exact_matches_scipy_16x16():
  x, z = _gaussians(7, (16, 16))
  perm = _assign(x, z, method="exact")
  cost = _cost64(x, z)
  np.testing.assert_allclose(_total(cost, perm), _optimum(cost), rtol=1e-9)
  np.testing.assert_array_equal(
    np.asarray(perm), linear_sum_assignment(cost)[1]
  )


def test_exact_solves_a_known_shuffle():
  # Noise = data in a shuffled order plus a little jitter: the optimal
  # pairing must undo the shuffle exactly.
  x, jitter = _gaussians(3, (32, 64))
  shuffle = np.asarray(jax.random.permutation(jax.random.key(4), 32))
  z = x[shuffle] + 1e-3 * jitter
  perm = _assign(x, z, method="exact")
  np.testing.assert_array_equal(shuffle[np.asarray(perm)], np.arange(32))


def test_exact_pairs_as_ott_jax_hungarian():
  # `exact` calls the solver that ott-jax's unreg.hungarian wraps; the two
  # must give the same permutation on the same normalized cost.
  from ott.geometry import geometry
  from ott.tools import unreg

  for seed in range(3):
    x, z = _gaussians(10 + seed, (48, 256))
    geom = geometry.Geometry(cost_matrix=coupling._exact_cost(x, z))
    rows, cols = unreg.hungarian(geom)[1].paired_indices
    ott_perm = np.zeros(48, np.int32)
    ott_perm[np.asarray(rows)] = np.asarray(cols)
    np.testing.assert_array_equal(
      np.asarray(_assign(x, z, method="exact")), ott_perm
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_sinkhorn_is_near_optimal(seed):
  x, z = _gaussians(seed, (64, 4096))
  perm = _assign(x, z, method="sinkhorn")
  _assert_permutation(perm, 64)
  cost = _cost64(x, z)
  total, best, identity = _total(cost, perm), _optimum(cost), np.trace(cost)
  assert total / best - 1 <= _SINKHORN_MAX_REL_GAP
  assert (total - best) / (identity - best) <= _SINKHORN_MAX_FRACTION_OF_GAIN


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_pairing_lowers_mean_cost(method):
  x, z = _gaussians(5, (32, 64))
  perm = _assign(x, z, method=method)
  cost = _cost64(x, z)
  assert _total(cost, perm) / 32 < np.trace(cost) / 32 * 0.99


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_any_input_gives_a_permutation(method):
  # A NaN batch must neither hang the solver loops nor break the permutation
  # (the train step skips such an update, ALGORITHM.md §8).
  x, z = _gaussians(6, (8, 6))
  x = x.at[2, 3].set(jnp.nan)
  z = z.at[5, 0].set(jnp.inf)
  _assert_permutation(_assign(x, z, method=method), 8)
  zeros = jnp.zeros((8, 6))
  _assert_permutation(_assign(zeros, zeros, method=method), 8)


def _crossing_batch(batch):
  """Data and noise whose optimal pairs cross shards: noise = data shifted
  by 5 rows (so by one shard of 4 plus one) plus jitter."""
  x, jitter = _gaussians(8, (batch, 2, 2, 4))
  return x, jnp.roll(x, 5, axis=0) + 1e-3 * jitter


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_groups_pair_within_themselves(method, axis_type):
  batch, devices, group = 32, 8, 4
  mesh = jax.make_mesh((devices,), ("data",), axis_types=(axis_type,))
  x, z = _crossing_batch(batch)
  sharding = NamedSharding(mesh, P("data"))
  xs, zs = jax.device_put(x, sharding), jax.device_put(z, sharding)
  # Groups of 4: every output row comes from its own group of z.
  grouped = _pair(xs, zs, method=method, group_size=group, mesh=mesh)
  src = _source_rows(grouped, z)
  np.testing.assert_array_equal(src // group, np.arange(batch) // group)
  assert grouped.sharding.spec[0] == "data"
  # One group (0): the optimum undoes the roll, so pairs cross groups.
  whole = _pair(x, z, method=method)
  src = _source_rows(whole, z)
  np.testing.assert_array_equal(src, (np.arange(batch) + 5) % batch)
  for mesh_arg, arr in ((mesh, xs), (None, xs), (None, x)):
    out = _pair(arr, zs if arr is xs else z, method=method, mesh=mesh_arg)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(whole))


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
@pytest.mark.parametrize("group", [0, 4, 8, 16])
def test_pairing_does_not_depend_on_the_device_count(method, group):
  """The same batch and group size pair identically on 1, 2, 4, 8 devices:
  on each device for its own groups, or replicated where the groups do not
  divide over the devices (e.g. 2 groups of 16 on 4 or 8 devices)."""
  x, z = _gaussians(11, (32, 4, 4, 4))
  outs = {}
  for n in (1, 2, 4, 8):
    mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
    sharding = NamedSharding(mesh, P("data"))
    xs, zs = jax.device_put(x, sharding), jax.device_put(z, sharding)
    out = _pair(xs, zs, method=method, group_size=group, mesh=mesh)
    outs[n] = _source_rows(out, z)
  size = group or 32
  np.testing.assert_array_equal(outs[1] // size, np.arange(32) // size)
  for n in (2, 4, 8):
    np.testing.assert_array_equal(outs[n], outs[1], err_msg=f"{n} devices")
  if method == "exact":  # Each group's pairing is its own optimum.
    for g in range(32 // size):
      rows = slice(g * size, (g + 1) * size)
      cost = _cost64(x[rows], z[rows])
      total = _total(cost, outs[1][rows] - g * size)
      assert total == pytest.approx(_optimum(cost), rel=1e-9)


def test_global_equals_unsharded_on_gaussians():
  mesh = jax.make_mesh((8,), ("data",))
  x, z = _gaussians(9, (32, 2, 2, 4))
  sharding = NamedSharding(mesh, P("data"))
  xs, zs = jax.device_put(x, sharding), jax.device_put(z, sharding)
  for method in ("exact", "sinkhorn"):
    np.testing.assert_array_equal(
      np.asarray(_pair(xs, zs, method=method, mesh=mesh)),
      np.asarray(_pair(x, z, method=method)),
    )


def test_bad_names_and_arguments_raise_clear_errors():
  with pytest.raises(ValueError) as err:
    coupling.validate("foo")
  assert str(err.value) == (
    "coupling.method='foo' is unknown; choose one of exact, sinkhorn, none"
  )
  x, z = _gaussians(0, (16, 4))
  with pytest.raises(ValueError, match="method='hungarian' is unknown"):
    coupling.pair(x, z, method="hungarian")
  with pytest.raises(ValueError) as err:
    coupling.pair(x, z, method="exact", group_size=6)
  assert str(err.value) == (
    "coupling.group_size=6 must divide the global batch 16; use a divisor "
    "of it (0 pairs the whole batch as one group)"
  )
  with pytest.raises(ValueError, match="same shape"):
    coupling.assignment(x, z[:8], method="exact")
  with pytest.raises(ValueError, match="epsilon=0.0 must be > 0"):
    coupling.assignment(x, z, method="sinkhorn", epsilon=0.0)
  with pytest.raises(ValueError, match="iterations=0 must be >= 1"):
    coupling.assignment(x, z, method="sinkhorn", iterations=0)
  mesh = jax.make_mesh((8,), ("data",))
  with pytest.raises(ValueError, match="mesh has no axis 'batch'"):
    coupling.pair(x, z, method="exact", mesh=mesh, axis="batch")
  with pytest.raises(ValueError, match="batch 12 is not divisible by the 8"):
    coupling.pair(x[:12], z[:12], method="exact", mesh=mesh)


def _numpy_greedy(score):
  """Reference greedy: repeatedly take the smallest remaining entry."""
  score, perm = np.array(score, np.float64), np.zeros(len(score), int)
  for _ in range(len(score)):
    row, col = np.unravel_index(np.argmin(score), score.shape)
    perm[row], score[row, :], score[:, col] = col, np.inf, np.inf
  return perm


def test_greedy_round_takes_smallest_remaining_entry():
  np.testing.assert_array_equal(
    coupling._greedy_round(jnp.array([[1.0, 2.0], [0.0, 5.0]])), [1, 0]
  )
  score = jax.random.normal(jax.random.key(10), (16, 16))
  np.testing.assert_array_equal(
    jax.jit(coupling._greedy_round)(score), _numpy_greedy(score)
  )


def test_inner_iterations_divide():
  for iterations in (1, 7, 10, 12, 200, 201):
    inner = coupling._inner_iterations(iterations)
    assert iterations % inner == 0 and 1 <= inner <= 10


def test_benchmark_reports_figures():
  figures = bench_parts.time_ot(batch=8, dim=16, repeats=2)
  for name in ("exact", "exact_crouse", "sinkhorn"):
    assert figures[f"{name}_s"] > 0
  assert (figures["batch"], figures["dim"]) == (8, 16)
  # The dense Crouse solver is skipped above CROUSE_MAX (seconds there).
  big = bench_parts.time_ot(batch=bench_parts.CROUSE_MAX + 8, dim=4, repeats=1)
  assert "exact_crouse_s" not in big and big["exact_s"] > 0


def test_runs_from_before_group_size_pair_as_they_were_trained():
  """A config.json with coupling.scope: global = one group, shard = one per
  device, auto = one group up to 512 examples and per device above."""
  assert coupling.legacy_group_size("auto", 128, 8) == 0
  assert coupling.legacy_group_size("auto", 512, 8) == 0
  assert coupling.legacy_group_size("auto", 1536, 8) == 192
  assert coupling.legacy_group_size("global", 4096, 8) == 0
  assert coupling.legacy_group_size("shard", 16, 8) == 2
  with pytest.raises(ValueError, match="coupling.scope='world' is unknown"):
    coupling.legacy_group_size("world", 16, 8)
