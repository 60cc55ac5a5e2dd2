"""The optimizer: RAdam (or Adam) with PyTorch-style coupled L2, constant lr.

ALGORITHM.md §12: torch.optim.RAdam(lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
weight_decay=1e-4). PyTorch adds weight_decay * param to the gradient before
the moment updates ("coupled" L2), which in optax is
chain(add_decayed_weights(wd), radam(lr)). No warmup, no decay, no clipping
(the reference's clip call is commented out).
"""

import ml_collections
import optax

from ilct_jax import choices

OPTIMIZERS = ("radam", "adam")


def create_optimizer(
  optim: ml_collections.ConfigDict,
) -> optax.GradientTransformation:
  """Builds the optimizer named by `optim.name` with coupled L2 decay."""
  choices.check("optim.name", optim.name, OPTIMIZERS)
  make = optax.radam if optim.name == "radam" else optax.adam
  base = make(optim.lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  if optim.weight_decay > 0:
    return optax.chain(optax.add_decayed_weights(optim.weight_decay), base)
  return base
