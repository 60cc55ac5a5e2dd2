"""Built-in DiT demo: a class-conditional DiT on 16x16 digits, on a CPU.

Reproduces no paper row. It trains the authors' later backbone (the DiT of
quandao10/LCT branch `trans_reproduce`, docs/ALGORITHM.md §20: RMSNorm,
q/k norm, RoPE, the frequency filter, the gated MLP) with the paper's recipe
(Cauchy loss with adaptive c, diffusion loss, exact OT pairing, RAdam, iCT
curriculum) on the UCI digits with their 10 labels, label dropout 0.1, and
samples each requested class with classifier-free guidance
(`--config.sample.label=7`, `--config.sample.cfg_scale=1.5`).

Hardware: 2 CPU cores. Wall time: see README (measured with this config).
Expected result: 1-step and 2-step grids under WORKDIR/samples/ whose
sample i shows digit i mod 10 (every row 0..9 in order when the grid is
10 wide is not guaranteed: the grid is 8 wide; README shows it).

  python -m ilct_jax.main --config=configs/demo_dit.py --workdir=/tmp/ilct_dit

Deviations from the authors' runs, for size and speed: pixel mode on
1-channel 16x16 digits (their DiTs see 32x32x4 SD latents), a 6-block,
128-wide DiT with patch 4 (their smallest is DiT-S/2), batch 64, lr 5e-4,
the demo's short curriculum (10 -> 20) and EMA 0.99, as configs/demo.py.
"""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  """Returns the DiT demo config."""
  config = demo.get_config()
  config.model.arch = "dit"
  config.model.norm = "rms"
  config.model.num_classes = 10
  config.model.label_dropout = 0.1
  config.model.dit.size = "S"
  config.model.dit.depth = 6
  config.model.dit.hidden = 128
  config.model.dit.heads = 4
  # Patch 4 on 16x16 = 16 tokens of 4x4 pixels (patch 2 of the 8x8 originals):
  # 0.16 s/step here; patch 2 (64 tokens) costs 8x the FLOPs per step.
  config.model.dit.patch = 4
  # No OT pairing, as the authors' class-conditional ImageNet run ("noot"):
  # a batch-wide pairing of noise and images ignores the classes, makes the
  # image nearly a function of the noise alone, and the network then learns
  # to ignore the label (measured here: with exact OT, samples for labels 0
  # and 5 from the same noise were the same digit after 2,000 steps).
  config.coupling.method = "none"
  config.sample.cfg_scale = 1.5
  config.sample.num = 100  # A 10x10 grid: row r, column k shows class k.
  return config
