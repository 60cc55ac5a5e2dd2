"""Paper configs: the numbers ALGORITHM.md §13 fixes, and they build a model."""

import jax
import pytest

from configs import celeba, demo, ffhq, ilct_baseline, lsun_church
from ilct_jax import config_checks, consistency, train
from ilct_jax import state as state_lib
from ilct_jax.models import unet


def test_celeba_is_the_verified_run():
  c = celeba.get_config()
  steps = train.total_steps(c, 27_000)
  assert steps == 294_000  # 210 steps/epoch * 1400 epochs.
  # 7 equal stages of 42,000 steps: N = 11, 21, ..., 641.
  assert int(consistency.num_scales(41_999, steps, 10, 640)) == 11
  assert int(consistency.num_scales(42_000, steps, 10, 640)) == 21
  assert int(consistency.num_scales(252_000, steps, 10, 640)) == 641
  assert (c.ct.loss, c.ct.c_schedule, c.model.norm) == (
    "cauchy",
    "adaptive",
    "nsln",
  )
  assert c.ct.diffusion_loss and c.ct.diffusion_weight == 5.0
  assert c.ct.diffusion_threshold == 0.75 and c.coupling.method == "exact"
  assert (c.optim.name, c.optim.lr, c.optim.weight_decay) == (
    "radam",
    1e-4,
    1e-4,
  )
  assert c.model.dropout == 0.0 and 0.99993 in c.ema.decays
  assert tuple(c.sample.ts) == (0, 420, 640)
  config_checks.check_names(c)


@pytest.mark.parametrize("module", [celeba, lsun_church, ffhq, ilct_baseline])
def test_paper_configs_build(module):
  c = module.get_config()
  config_checks.check_names(c)
  params = jax.eval_shape(
    lambda k: state_lib._init(c, k),
    jax.random.key(0),  # noqa: SLF001
  ).params
  n = unet.count_params(params)
  if c.model.norm == "nsln":
    assert n == 158_355_972  # ALGORITHM.md §11a: ~158M with NsLN.
  else:
    assert 50e6 < n < 151_325_956  # 2 blocks per level, GroupNorm.


def test_demo_config_is_pixel_mode_full_recipe():
  c = demo.get_config()
  assert c.data.source == "digits" and c.data.channels == 1
  assert c.ct.loss == "cauchy" and c.model.norm == "nsln"
  config_checks.check_names(c)
