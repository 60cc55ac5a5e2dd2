"""The jitted train step: mesh invariance, one compile, NaN policy, recipe."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilct_jax import consistency, coupling, losses, optim, parallel, rng
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib


def _batch(config, seed=0):
  shape = (config.train.batch_size, *state_lib.example_shape(config))
  return np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32)


def _run(config, devices, steps=1, start_step=0, batch=None, total=6):
  mesh = parallel.make_mesh(devices)
  state = state_lib.create_train_state(config, mesh)
  state = state.replace(step=state.step + start_step)
  fn = step_lib.compile_train_step(config, mesh, total_steps=total)
  x = jax.device_put(
    _batch(config) if batch is None else batch, parallel.batch_sharding(mesh)
  )
  metrics = []
  for _ in range(steps):
    state, m = fn(state, x)
    metrics.append(jax.device_get(m))
  return state, metrics, fn


def test_one_device_and_eight_devices_agree(tiny_config):
  assert jax.device_count() == 8
  s1, m1, _ = _run(tiny_config, jax.devices()[:1], steps=2)
  s8, m8, _ = _run(tiny_config, jax.devices(), steps=2)
  for a, b in zip(m1, m8):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
  chex.assert_trees_all_close(
    jax.device_get(s1.params), jax.device_get(s8.params), atol=1e-5, rtol=1e-4
  )
  chex.assert_trees_all_close(
    jax.device_get(s1.ema_params), jax.device_get(s8.ema_params), atol=1e-5
  )


def test_one_compile_across_curriculum_stages(tiny_config):
  # total 6 steps, s0=10 -> s1=40: stages of 2 steps, N = 11, 21, 41.
  state, metrics, fn = _run(tiny_config, jax.devices(), steps=6)
  ns = [float(m["num_scales"]) for m in metrics]
  assert ns == [11, 11, 21, 21, 41, 41]
  cs = [float(m["c"]) for m in metrics]
  assert cs[0] == pytest.approx(0.00054 * 8)  # c0 for d = 8*8*1.
  assert cs[2] == pytest.approx(np.exp(-1.15 * np.log(20) - 0.85), rel=1e-5)
  assert fn._cache_size() == 1  # noqa: SLF001 - jax's jit cache counter.
  assert int(state.step) == 6


def test_step_traces_once(tiny_config):
  mesh = parallel.make_mesh()
  model = state_lib.create_model(tiny_config)
  traced = chex.assert_max_traces(n=1)(
    lambda s, b: step_lib.train_step(
      s, b, config=tiny_config, apply_fn=model.apply, total_steps=6, mesh=mesh
    )
  )
  fn = jax.jit(traced)
  state = state_lib.create_train_state(tiny_config, mesh)
  x = jax.device_put(_batch(tiny_config), parallel.batch_sharding(mesh))
  for _ in range(5):  # Crosses two stage changes.
    state, _ = fn(state, x)


def test_nonfinite_batch_skips_update_and_counts(tiny_config):
  mesh = parallel.make_mesh()
  state0 = state_lib.create_train_state(tiny_config, mesh)
  before = jax.device_get(state0.params)
  fn = step_lib.compile_train_step(tiny_config, mesh, total_steps=6)
  bad = _batch(tiny_config)
  bad[0, 0, 0, 0] = np.nan
  state, m = fn(state0, jax.device_put(bad, parallel.batch_sharding(mesh)))
  assert not np.isfinite(float(m["loss"]))
  assert int(state.nonfinite) == 1 and int(state.step) == 1
  chex.assert_trees_all_equal(jax.device_get(state.params), before)
  good = jax.device_put(_batch(tiny_config), parallel.batch_sharding(mesh))
  state, m = fn(state, good)
  assert np.isfinite(float(m["loss"])) and int(state.nonfinite) == 1
  changed = jax.tree.map(
    lambda a, b: bool(np.any(a != b)), jax.device_get(state.params), before
  )
  assert any(jax.tree.leaves(changed))


def test_full_recipe_step_on_eight_devices(tiny_config):
  c = tiny_config
  assert (c.ct.loss, c.ct.c_schedule, c.model.norm) == (
    "cauchy",
    "adaptive",
    "nsln",
  )
  assert c.ct.diffusion_loss and c.coupling.method == "exact"
  _, metrics, _ = _run(c, jax.devices(), steps=1)
  m = metrics[0]
  assert np.isfinite(m["loss"]) and m["diff_frac"] > 0
  expected = m["ct_loss"] + 5.0 * m["diff_loss"]
  assert m["loss"] == pytest.approx(expected, rel=1e-5)


def test_loss_matches_hand_computation(tiny_config):
  """The step's reported loss equals ALGORITHM.md §8 recomputed outside."""

  c = tiny_config
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = state_lib.create_train_state(c, mesh)
  model = state_lib.create_model(c)
  params = jax.device_get(state.params)  # The step donates `state`.
  x0 = jnp.asarray(_batch(c))
  _, m = step_lib.compile_train_step(c, mesh, total_steps=6)(
    state, jax.device_put(x0, parallel.batch_sharding(mesh))
  )
  key = rng.key_at(c.seed, "train", 0)
  k_noise, k_idx, _ = jax.random.split(key, 3)
  z = jax.random.normal(k_noise, x0.shape)
  z = z[coupling.assignment(x0, z, method="exact")]
  grid = consistency.karras_grid(11, 41, 0.002, 80.0, 7.0)
  idx = consistency.sample_indices(k_idx, x0.shape[0], grid, 11, c.ct)
  t, r = grid[idx], grid[idx + 1]
  f = lambda x, s: consistency.consistency_fn(
    model.apply, params, x, s, c.ct, train=False
  )
  out = f(x0 + t[:, None, None, None] * z, t)
  tgt = f(x0 + r[:, None, None, None] * z, r)
  mse = jnp.mean((out - tgt) ** 2, axis=(1, 2, 3))
  cc = 0.00054 * 8
  ct_loss = jnp.mean(jnp.log1p(mse / (2 * cc**2)) / (t - r))
  mask = idx >= 8  # floor(0.75 * 11)
  d = jnp.mean((out - x0) ** 2, axis=(1, 2, 3)) * (1 / t**2 + 4)
  diff = jnp.sum(d * mask) / jnp.maximum(jnp.sum(mask), 1)
  assert float(m["ct_loss"]) == pytest.approx(float(ct_loss), rel=1e-4)
  assert float(m["diff_loss"]) == pytest.approx(float(diff), rel=1e-4)


def _nonzero_output(params):
  """Params whose zero-initialized convs are made non-zero (so the network
  output, and with it the teacher's, depends on every layer)."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(3)
  leaves = [
    jnp.where(x == 0, 0.05 * rng.standard_normal(x.shape), x).astype(x.dtype)
    for x in leaves
  ]
  return jax.tree.unflatten(tree, leaves)


def test_teacher_is_a_constant_for_the_gradient(tiny_config, monkeypatch):
  """ALGORITHM.md §5: grad of the step's loss == grad with the teacher's
  output computed beforehand as a constant; without stop_gradient it would
  differ (checked, so this test can fail)."""
  c = tiny_config
  model = state_lib.create_model(c)
  mesh = parallel.make_mesh(jax.devices()[:1])
  params = _nonzero_output(
    jax.device_get(state_lib.create_train_state(c, mesh).params)
  )
  x0 = jnp.asarray(_batch(c))
  noise = jax.random.normal(jax.random.key(1), x0.shape)
  num = jnp.int32(11)
  sigmas = consistency.karras_grid(num, 41, 0.002, 80.0, 7.0)
  idx = jnp.arange(x0.shape[0]) % 10
  cc = jnp.float32(0.00054 * 8)
  key = jax.random.key(2)
  args = (model.apply, x0, noise, idx, sigmas, num, cc, key, c)
  loss = lambda p: step_lib._ct_loss(p, *args)[0]
  g_step = jax.jit(jax.grad(loss))(params)

  t, r = sigmas[idx], sigmas[idx + 1]
  f = lambda p, x, s: consistency.consistency_fn(
    model.apply, p, x, s, c.ct, train=True
  )
  target = f(params, x0 + r[:, None, None, None] * noise, r)  # A constant.

  def by_hand(p):
    online = f(p, x0 + t[:, None, None, None] * noise, t)
    w = 1.0 / (t - r)
    ct_loss = losses.consistency_loss("cauchy", online, target, w, cc)
    mask = losses.diffusion_mask(idx, num, 0.75)
    diff = losses.diffusion_loss(online, x0, t, mask, 0.5)
    return ct_loss + 5.0 * diff

  g_const = jax.jit(jax.grad(by_hand))(params)
  # Two float32 evaluations of the same gradient: rounding-level agreement.
  chex.assert_trees_all_close(g_step, g_const, rtol=1e-4, atol=1e-6)
  monkeypatch.setattr(jax.lax, "stop_gradient", lambda x: x)
  g_through = jax.jit(jax.grad(loss))(params)
  monkeypatch.undo()
  num_diff = sum(
    float(jnp.sum(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(g_through), jax.tree.leaves(g_step))
  )
  total = sum(float(jnp.sum(jnp.abs(a))) for a in jax.tree.leaves(g_step))
  assert num_diff > 1e-2 * total  # The teacher's gradient would matter.


def _state_and_grads(c, seed):
  """A one-device state with distinct EMAs, and random gradients."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = state_lib.create_train_state(c, mesh)
  rng = np.random.default_rng(seed)
  grads = jax.tree.map(
    lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), state.params
  )
  emas = tuple(
    jax.tree.map(lambda x, k=k: x + 0.1 * (k + 1), state.params)
    for k in range(len(state.ema_decays))
  )
  return state.replace(ema_params=emas), grads


def test_ema_update_is_d_ema_plus_1_minus_d_params(tiny_config):
  """ALGORITHM.md §12: ema <- d * ema + (1 - d) * theta_new, for each d;
  a non-finite step changes nothing."""
  c = tiny_config
  state, grads = _state_and_grads(c, 0)
  before = jax.device_get(state)
  tx = optim.create_optimizer(c.optim)
  apply = jax.jit(lambda s, g, ok: s.apply_gradients(tx, g, ok))
  new = apply(state, grads, jnp.bool_(True))
  updates, _ = jax.jit(tx.update)(grads, before.opt_state, before.params)
  theta = jax.tree.map(lambda p, u: p + u, before.params, updates)
  chex.assert_trees_all_close(new.params, theta, rtol=1e-6, atol=1e-7)
  for d, old, got in zip(c.ema.decays, before.ema_params, new.ema_params):
    want = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, old, theta)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
  assert int(new.step) == 1 and int(new.nonfinite) == 0
  skipped = apply(state, grads, jnp.bool_(False))
  chex.assert_trees_all_equal(
    jax.device_get(skipped.ema_params), before.ema_params
  )
  chex.assert_trees_all_equal(jax.device_get(skipped.params), before.params)
  assert int(skipped.step) == 1 and int(skipped.nonfinite) == 1


def test_authors_nonfinite_policy_steps_emas_and_halves_lr(tiny_config):
  """train.nonfinite=authors (LCT `ot` train_cm_latent.py): a skipped step
  leaves params and moments but moves every EMA toward the unchanged
  params; the update halves after 101, 202, ... skipped steps."""
  c = tiny_config
  state, grads = _state_and_grads(c, 1)
  before = jax.device_get(state)
  tx = optim.create_optimizer(c.optim)
  apply = jax.jit(
    lambda s, g, ok: s.apply_gradients(tx, g, ok, "authors"),
  )
  skipped = apply(state, grads, jnp.bool_(False))
  chex.assert_trees_all_equal(jax.device_get(skipped.params), before.params)
  chex.assert_trees_all_equal(
    jax.device_get(skipped.opt_state), before.opt_state
  )
  for d, old, got in zip(c.ema.decays, before.ema_params, skipped.ema_params):
    want = jax.tree.map(
      lambda e, p, d=d: d * e + (1 - d) * p, old, before.params
    )
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
  assert int(skipped.nonfinite) == 1 and int(skipped.step) == 1

  def delta(nonfinite):
    s = state.replace(nonfinite=jnp.asarray(nonfinite, state.nonfinite.dtype))
    new = jax.device_get(apply(s, grads, jnp.bool_(True)))
    return jax.tree.map(lambda a, b: a - b, new.params, before.params)

  full = delta(0)  # p + u - p: rounding of ~1e-8 on updates of ~1e-5.
  chex.assert_trees_all_equal(delta(100), full)  # Not yet: > 100 halves.
  for n, scale in ((101, 0.5), (201, 0.5), (202, 0.25)):
    chex.assert_trees_all_close(
      delta(n),
      jax.tree.map(lambda u, s=scale: s * u, full),
      rtol=1e-5,
      atol=2e-8,
    )
  assert float(state_lib.authors_lr_scale(jnp.int32(303))) == 0.125


def test_nonfinite_policies_in_the_loop(tiny_config):
  """halt stops the run past train.max_nonfinite; skip and authors go on."""
  from ilct_jax import config_checks

  for policy in ("halt", "skip", "authors"):
    c = tiny_config.copy_and_resolve_references()
    c.train.nonfinite = policy
    config_checks.check_names(c)
  c.train.nonfinite = "ignore"
  with pytest.raises(ValueError, match="train.nonfinite='ignore' is unknown"):
    config_checks.check_names(c)


@pytest.mark.parametrize("group", [0, 4])
def test_pairing_and_first_loss_do_not_depend_on_devices(tiny_config, group):
  """coupling.group_size fixes the OT groups of the global batch: the paired
  noise is identical on 1, 2, 4 and 8 devices, and so is the first loss."""
  c = tiny_config.copy_and_resolve_references()
  c.coupling.group_size = group
  batch = _batch(c)
  key = jax.random.key(3)
  noises, losses_ = {}, {}
  for n in (1, 2, 4, 8):
    mesh = parallel.make_mesh(jax.devices()[:n])
    x = jax.device_put(batch, parallel.batch_sharding(mesh))
    fn = jax.jit(
      lambda k, x, mesh=mesh: step_lib.paired_noise(k, x, c.coupling, mesh)
    )
    noises[n] = np.asarray(fn(key, x))
    _, m, _ = _run(c, jax.devices()[:n], batch=batch)
    losses_[n] = float(m[0]["loss"])
  for n in (2, 4, 8):
    np.testing.assert_array_equal(noises[n], noises[1], err_msg=f"{n} dev")
    assert losses_[n] == pytest.approx(losses_[1], rel=1e-5)
  print("first-step loss on 1/2/4/8 devices:", losses_)
