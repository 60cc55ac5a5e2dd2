"""Optimal-transport pairing of a data batch with a noise batch, on device.

The reference (ALGORITHM.md §9, LCT `--ot-hard`) pairs the normalized
latents x0 with the unit-variance noise z by an exact optimal-transport plan
under the squared-Euclidean cost between flattened samples, with uniform
marginals. With equal uniform marginals that plan is a permutation, so this
module returns a permutation `perm` such that (x[k], z[perm[k]]) are the
pairs. The order of the pairs does not matter (ALGORITHM.md §9), so no
randomness is involved.

Everything here is jittable and runs on the device inside the train step: no
numpy, scipy or host callbacks (ALGORITHM.md §19). Methods:

* `exact`: the Hungarian algorithm that ott-jax's `ott.tools.unreg.hungarian`
  runs, optax's `assignment.hungarian_algorithm`, called directly (a test
  checks it pairs exactly as ott-jax's wrapper does). `import ott` loads all
  of ott-jax (its tools, datasets, matplotlib, scipy, lineax): 1.4 s and
  100 MiB of resident memory for a wrapper, so ott-jax is imported only
  when `sinkhorn` is used. Measured on the 2-core CPU at B = 128, d = 4096
  under jit it took ~3 ms against ~45-95 ms for optax's other solver
  (`base_hungarian_algorithm`, Crouse 2016), which the benchmark still
  times as `exact_crouse` (`crouse_assignment`).
* `sinkhorn`: ott-jax entropic Sinkhorn with a fixed number of iterations,
  then rounded to a permutation (see `_sinkhorn`). On the same CPU it took
  ~9 ms (200 iterations), slower than `exact`, and lands ~0.1-0.2% above
  the optimal total cost. It is the reference's unused alternative, kept for
  accelerators where the Hungarian's data-dependent loops may cost more
  (not measured here).
* `none`: the identity pairing.

Groups (docs/ALGORITHM.md §9): `coupling.group_size` G splits the global
batch into contiguous groups of G rows, and each group is paired on its own
(0: the whole batch is one group). The authors' runs paired per GPU, so the
paper configs set G to their per-GPU batch (128 for CelebA, 192 for LSUN).
The pairing depends only on the batch and G, never on the device count:
every group is solved by the same computation, one group after another
(`lax.map`), either on each device for its own whole groups (when the groups
divide over the devices) or on a replicated copy of the batch; which of the
two runs is a speed choice that cannot change a permutation (tested on 1, 2,
4 and 8 devices).
"""

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from optax import assignment as optax_assignment

from ilct_jax import choices

METHODS = ("exact", "sinkhorn", "none")
# Before coupling.group_size, runs chose a scope; their config.json still
# says so, and `legacy_group_size` pairs them as they were trained.
LEGACY_SCOPES = ("global", "shard", "auto")
LEGACY_AUTO_GLOBAL_MAX = 512  # `auto`: whole batch up to 512, else per device.


def legacy_group_size(scope: str, batch: int, devices: int) -> int:
  """The group size a pre-group_size run's `coupling.scope` meant."""
  choices.check("coupling.scope", scope, LEGACY_SCOPES)
  per_device = scope == "shard" or (
    scope == "auto" and batch > LEGACY_AUTO_GLOBAL_MAX
  )
  return batch // devices if per_device else 0


def group_count(batch: int, group_size: int) -> int:
  """How many OT groups a global batch has; a clear error if G misfits."""
  size = group_size or batch
  if isinstance(group_size, bool) or size < 1 or batch % size:
    raise ValueError(
      f"coupling.group_size={group_size!r} must divide the global batch "
      f"{batch}; use a divisor of it (0 pairs the whole batch as one group)"
    )
  return batch // size


# ott-jax's default Sinkhorn convergence-check period (Sinkhorn.__init__).
_MAX_INNER_ITERATIONS = 10


def validate(method: str) -> None:
  """Raises a clear ValueError if `method` is not one of METHODS."""
  choices.check("coupling.method", method, METHODS)


def _check_solver_args(epsilon: float, iterations: int) -> None:
  if not epsilon > 0:
    raise ValueError(
      f"coupling.epsilon={epsilon!r} must be > 0 (it is relative to the max "
      "cost); use e.g. 0.01"
    )
  if isinstance(iterations, bool) or not isinstance(iterations, int):
    raise ValueError(
      f"coupling.iterations={iterations!r} must be a Python int >= 1"
    )
  if iterations < 1:
    raise ValueError(f"coupling.iterations={iterations} must be >= 1")


def _flatten(a: jax.Array) -> jax.Array:
  """[B, ...] -> float32 [B, D]; the coupling never carries gradients."""
  a = jax.lax.stop_gradient(a)
  return a.reshape(a.shape[0], -1).astype(jnp.float32)


def _exact_cost(xf: jax.Array, zf: jax.Array) -> jax.Array:
  """A cost matrix whose optimal assignment is the squared-Euclidean one.

  |x_i - z_j|^2 = |x_i|^2 + |z_j|^2 - 2 x_i.z_j. Every permutation sums every
  |x_i|^2 and every |z_j|^2 exactly once, so the optimal permutation depends
  only on -x_i.z_j. Dropping the norms avoids float32 cancellation between
  numbers of size ~2D (D = 4096 for CelebA latents), and dividing by the max
  absolute value (the reference's `normalize_cost`, ALGORITHM.md §9)
  rescales without changing the plan.
  """
  # HIGHEST: GPUs may otherwise run float32 matmuls in TF32 (10-bit
  # mantissa), enough to flip nearly tied assignments.
  cost = -jnp.matmul(xf, zf.T, precision=jax.lax.Precision.HIGHEST)
  scale = jnp.max(jnp.abs(cost))
  cost = cost / jnp.where(scale > 0, scale, 1.0)
  # A NaN/inf cost could keep the Hungarian search loops from terminating;
  # such a step's loss is NaN and skipped anyway (ALGORITHM.md §8), so
  # any permutation will do: solve an all-zero cost instead.
  return jnp.where(jnp.all(jnp.isfinite(cost)), cost, 0.0)


def _perm_from_pairs(rows: jax.Array, cols: jax.Array) -> jax.Array:
  """Row/column index pairs of a full matching -> perm with perm[row] = col."""
  perm = jnp.zeros(rows.shape, jnp.int32)
  return perm.at[rows].set(cols.astype(jnp.int32))


def _exact(xf: jax.Array, zf: jax.Array) -> jax.Array:
  """Exact minimum-cost permutation (the solver of ott-jax's `hungarian`)."""
  rows, cols = optax_assignment.hungarian_algorithm(_exact_cost(xf, zf))
  return _perm_from_pairs(rows, cols)


def crouse_assignment(x: jax.Array, z: jax.Array) -> jax.Array:
  """Exact permutation by optax's Crouse-2016 solver.

  Not a `coupling.method`: it is slower than ott-jax's Hungarian and kept as
  a reference point for `python -m ilct_jax.benchmark --mode=ot`.
  """
  cost = _exact_cost(_flatten(x), _flatten(z))
  rows, cols = optax_assignment.base_hungarian_algorithm(cost)
  return _perm_from_pairs(rows, cols)


def _greedy_round(score: jax.Array) -> jax.Array:
  """Greedy rounding of a score matrix (lower is better) to a permutation.

  B times: take the smallest score among rows and columns not yet used and
  pair that row with that column. Each step removes one row and one column
  (set to +inf), so after B steps every row has a distinct column: a
  permutation for any input. NaN/inf scores are first replaced by the largest
  finite float, so an unused entry always beats a removed one. The smallest
  entry is found as the row with the smallest row minimum, then the column
  within it: the same pick (and tie-break) as a flat argmin, ~20x faster on
  CPU, where XLA's argmin over B^2 entries is slow.

  Args:
    score: [B, B] float matrix.

  Returns:
    int32 [B] perm, perm[row] = column.
  """
  n = score.shape[0]
  big = jnp.finfo(score.dtype).max
  score = jnp.nan_to_num(score, nan=big, posinf=big, neginf=-big)

  def step(_, carry):
    perm, remaining = carry
    row = jnp.argmin(jnp.min(remaining, axis=1))
    col = jnp.argmin(remaining[row])
    remaining = remaining.at[row, :].set(jnp.inf).at[:, col].set(jnp.inf)
    return perm.at[row].set(col.astype(jnp.int32)), remaining

  init = (jnp.zeros(n, jnp.int32), score)
  return jax.lax.fori_loop(0, n, step, init)[0]


def _inner_iterations(iterations: int) -> int:
  """Largest divisor of `iterations` not above ott-jax's default of 10.

  ott-jax runs `iterations // inner_iterations` blocks when min_iterations ==
  max_iterations (a scan, ott-jax#431), so it must divide exactly.
  """
  top = min(_MAX_INNER_ITERATIONS, iterations)
  return next(k for k in range(top, 0, -1) if iterations % k == 0)


def _sinkhorn(
  xf: jax.Array, zf: jax.Array, epsilon: float, iterations: int
) -> jax.Array:
  """Entropic OT plan with fixed iterations, greedily rounded to a perm.

  The cost is squared Euclidean divided by its max (the reference's
  `normalize_cost`), so `epsilon` is relative to the largest cost.
  min_iterations == max_iterations makes ott-jax use a fixed-length scan that
  jits and vmaps cleanly (ott-jax#431).

  Rounding: greedy, largest plan entry first (`_greedy_round`), done in log
  space on the reduced cost C_ij - f_i - g_j = -epsilon * log P_ij so that
  entries which underflow to 0 in P still rank. Greedy rather than Hungarian
  rounding because Hungarian on -log P is an exact solve of C itself (the
  potentials add per-row and per-column constants), i.e. `exact` with extra
  work; greedy is B vectorized steps and always yields a permutation.
  """
  # Lazy: `import ott` loads all of ott-jax (see the module docstring).
  from ott.geometry import pointcloud
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import sinkhorn

  with jax.default_matmul_precision("highest"):
    geom = pointcloud.PointCloud(xf, zf, epsilon=epsilon, scale_cost="max_cost")
    solver = sinkhorn.Sinkhorn(
      min_iterations=iterations,
      max_iterations=iterations,
      inner_iterations=_inner_iterations(iterations),
    )
    out = solver(linear_problem.LinearProblem(geom))
    reduced = geom.cost_matrix - out.f[:, None] - out.g[None, :]
  return _greedy_round(reduced)


def _explicit(mesh: Mesh, axis: str) -> bool:
  """Whether `axis` is an explicit-sharding axis (jax.make_mesh's default)."""
  types = dict(zip(mesh.axis_names, mesh.axis_types))
  return types.get(axis) == jax.sharding.AxisType.Explicit


def _place(a: jax.Array, mesh: Mesh, axis: str, spec: P) -> jax.Array:
  """Lays `a` out as `spec`: a reshard under explicit axes (a type change),
  a sharding constraint (a compiler hint) under automatic ones."""
  if _explicit(mesh, axis):
    return jax.sharding.reshard(a, NamedSharding(mesh, spec))
  return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))


def _replicated(a: jax.Array, mesh: Mesh | None, axis: str) -> jax.Array:
  """Gathers a batch-sharded array so one solver sees the whole batch.

  Needed under explicit sharding, where a matmul of two batch-sharded arrays
  is a type error; under automatic sharding it keeps the sequential solver
  loops off sharded operands.
  """
  if mesh is not None:
    return _place(a, mesh, axis, P())
  sharding = getattr(jax.typeof(a), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is not None and any(s is not None for s in spec):
    return jax.sharding.reshard(a, NamedSharding(sharding.mesh, P()))
  return a


def _local_assignment(
  xf: jax.Array, zf: jax.Array, method: str, epsilon: float, iterations: int
) -> jax.Array:
  if method == "exact":
    return _exact(xf, zf)
  if method == "sinkhorn":
    return _sinkhorn(xf, zf, epsilon, iterations)
  return jnp.arange(xf.shape[0], dtype=jnp.int32)


def _check_shapes(x: jax.Array, z: jax.Array) -> None:
  if x.shape != z.shape or x.ndim < 1:
    raise ValueError(
      f"coupling: data and noise must have the same shape [B, ...], got "
      f"{x.shape} and {z.shape}; draw the noise with the data's shape"
    )


def assignment(
  x: jax.Array,
  z: jax.Array,
  *,
  method: str,
  epsilon: float = 0.01,
  iterations: int = 200,
) -> jax.Array:
  """Optimal-transport permutation between a data and a noise batch.

  Args:
    x: data, [B, ...]; flattened per sample.
    z: noise, same shape as x.
    method: "exact" (minimum total squared-Euclidean cost), "sinkhorn"
      (entropic plan rounded to a permutation) or "none" (identity).
    epsilon: Sinkhorn regularization, relative to the max cost.
    iterations: fixed number of Sinkhorn iterations.

  Returns:
    int32 [B] perm such that the pairs are (x[k], z[perm[k]]).
  """
  validate(method)
  _check_shapes(x, z)
  _check_solver_args(epsilon, iterations)
  xf = _replicated(_flatten(x), None, "")
  zf = _replicated(_flatten(z), None, "")
  return _local_assignment(xf, zf, method, epsilon, iterations)


def _check_mesh(x: jax.Array, mesh: Mesh, axis: str) -> None:
  if axis not in mesh.shape:
    raise ValueError(
      f"coupling: mesh has no axis {axis!r} (axes {tuple(mesh.shape)}); pass "
      "axis= the batch axis name"
    )
  if x.shape[0] % mesh.shape[axis]:
    raise ValueError(
      f"coupling: batch {x.shape[0]} is not divisible by the "
      f"{mesh.shape[axis]} devices on mesh axis {axis!r}"
    )


def _group_perm(
  xf: jax.Array, zf: jax.Array, groups: int, solve_args: tuple
) -> jax.Array:
  """One permutation of all rows that pairs each contiguous group alone.

  The groups are solved one after another (`lax.map`), so each is the same
  computation whatever the number of groups in the call.
  """
  size = xf.shape[0] // groups
  pairs = (xf.reshape(groups, size, -1), zf.reshape(groups, size, -1))
  perms = jax.lax.map(lambda p: _local_assignment(*p, *solve_args), pairs)
  offsets = jnp.arange(groups, dtype=jnp.int32)[:, None] * size
  return (perms + offsets).reshape(-1)


def _pair_replicated(
  x: jax.Array,
  z: jax.Array,
  groups: int,
  mesh: Mesh | None,
  axis: str,
  solve_args: tuple,
) -> jax.Array:
  """Every group solved on a replicated copy of the batch."""
  z_sharding = getattr(jax.typeof(z), "sharding", None)
  xf = _replicated(_flatten(x), mesh, axis)
  z_all = _replicated(z, mesh, axis)
  paired = z_all[_group_perm(xf, _flatten(z_all), groups, solve_args)]
  if mesh is not None:
    return _place(paired, mesh, axis, P(axis))
  spec = getattr(z_sharding, "spec", None)
  if spec is not None and any(s is not None for s in spec):
    # Explicit sharding but no mesh argument: give back z's own layout.
    return jax.sharding.reshard(paired, z_sharding)
  return paired


def _pair_on_devices(
  x: jax.Array,
  z: jax.Array,
  groups: int,
  mesh: Mesh,
  axis: str,
  solve_args: tuple,
) -> jax.Array:
  """Each device solves the whole groups of its own shard."""
  local_groups = groups // mesh.shape[axis]

  def local(x_shard, z_shard):
    perm = _group_perm(
      _flatten(x_shard), _flatten(z_shard), local_groups, solve_args
    )
    return z_shard[perm]

  # check_vma=False: the solvers' loop carries start as unvarying constants
  # (jnp.zeros) and become per-device values, which the varying-manual-axes
  # type check rejects although the computation is purely local.
  return jax.shard_map(
    local, mesh=mesh, in_specs=P(axis), out_specs=P(axis), check_vma=False
  )(x, z)


def pair(
  x: jax.Array,
  z: jax.Array,
  *,
  method: str,
  group_size: int = 0,
  mesh: Mesh | None = None,
  axis: str = "data",
  epsilon: float = 0.01,
  iterations: int = 200,
) -> jax.Array:
  """Re-indexes the noise so that (x[k], result[k]) are the OT pairs.

  Args:
    x: data, [B, ...] (the global batch; may be sharded over `axis`).
    z: noise, same shape as x.
    method: one of METHODS; "none" returns z unchanged.
    group_size: rows per OT group (contiguous in the global batch); 0 = the
      whole batch. It must divide B.
    mesh: the device mesh. With it, a batch whose groups divide over the
      devices is paired on each device for its own groups, any other on a
      replicated copy; the permutation is the same either way.
    axis: the mesh axis the batch is sharded over.
    epsilon: Sinkhorn regularization, relative to the max cost.
    iterations: fixed number of Sinkhorn iterations.

  Returns:
    z[perm], same shape and dtype as z.
  """
  validate(method)
  _check_shapes(x, z)
  _check_solver_args(epsilon, iterations)
  groups = group_count(x.shape[0], group_size)
  if method == "none":
    return z
  args = (method, epsilon, iterations)
  if mesh is None:
    return _pair_replicated(x, z, groups, None, axis, args)
  _check_mesh(x, mesh, axis)
  if mesh.shape[axis] > 1 and groups % mesh.shape[axis] == 0:
    return _pair_on_devices(x, z, groups, mesh, axis, args)
  return _pair_replicated(x, z, groups, mesh, axis, args)
