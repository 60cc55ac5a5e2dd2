"""RAdam + coupled L2 equals torch's RAdam with weight decay (ALGORITHM §12)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from ilct_jax import optim


def test_radam_coupled_l2_matches_torch():
  torch = pytest.importorskip(
    "torch", reason="parity needs torch: pip install -e .[test]"
  )
  cfg = default.get_config().optim
  cfg.lr = 1e-2  # Larger than the paper's 1e-4 so differences would show.
  rng = np.random.default_rng(0)
  # float64 on both sides: in float32 the two libraries' roundings differ by
  # ~1e-4 relative after the rectification switch, which would hide the
  # algorithmic check (float64 agreement is ~1e-10).
  w0 = rng.normal(size=(5, 3))
  grads = [rng.normal(size=(5, 3)) for _ in range(8)]
  # RAdam switches from the SGD-with-momentum branch to the rectified Adam
  # branch at step 6 (rho_t > 5): 8 steps exercise both.
  tw = torch.nn.Parameter(torch.tensor(w0))
  topt = torch.optim.RAdam(
    [tw],
    lr=cfg.lr,
    betas=(cfg.b1, cfg.b2),
    eps=cfg.eps,
    weight_decay=cfg.weight_decay,
  )
  with jax.enable_x64(True):
    tx = optim.create_optimizer(cfg)
    params = {"w": jnp.asarray(w0, jnp.float64)}
    state = tx.init(params)
    for g in grads:
      tw.grad = torch.tensor(g)
      topt.step()
      updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
      params = optax.apply_updates(params, updates)
    got = np.asarray(params["w"])
  # torch puts eps outside the bias correction, optax inside: ~1e-10 apart.
  np.testing.assert_allclose(got, tw.detach().numpy(), rtol=0, atol=1e-8)


def test_unknown_optimizer():
  cfg = default.get_config().optim
  cfg.name = "sgd"
  with pytest.raises(ValueError, match="optim.name='sgd' is unknown"):
    optim.create_optimizer(cfg)
