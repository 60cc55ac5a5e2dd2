#!/usr/bin/env bash
# Every paper run and ablation (ALGORITHM.md 13 and 16) as one full command.
# Pick a line, run it (locally, or through tpu_run.sh / gpu_slurm.sbatch).
set -euo pipefail
R=${RUNS:-runs}
case "${1:-list}" in
  celeba)        python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/celeba ;;
  lsun_church)   python -m ilct_jax.main --config=configs/lsun_church.py --workdir=$R/lsun_church ;;
  ffhq)          python -m ilct_jax.main --config=configs/ffhq.py --workdir=$R/ffhq ;;
  ilct_baseline) python -m ilct_jax.main --config=configs/ilct_baseline.py --workdir=$R/ilct_baseline ;;
  # Robust loss (everything else fixed): Cauchy 7.27, pseudo-Huber 9.97, GM 11.28.
  loss_huber)    python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/loss_huber --config.ct.loss=huber ;;
  loss_gm)       python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/loss_gm --config.ct.loss=gm ;;
  # Diffusion loss off / threshold 0.40.
  no_diff)       python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/no_diff --config.ct.diffusion_loss=False ;;
  diff_040)      python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/diff_040 --config.ct.diffusion_threshold=0.4 ;;
  # Constant c multiples of c0 instead of the adaptive schedule.
  c_001)         python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/c_001 --config.ct.c_schedule=constant --config.ct.c_mult=0.01 ;;
  c_3)           python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/c_3 --config.ct.c_schedule=constant --config.ct.c_mult=3 ;;
  # Normalization of every UNet norm layer.
  norm_group)    python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/norm_group --config.model.norm=group ;;
  norm_layer)    python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/norm_layer --config.model.norm=layer ;;
  norm_rms)      python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/norm_rms --config.model.norm=rms ;;
  norm_instance) python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/norm_instance --config.model.norm=instance ;;
  # OT pairing off.
  no_ot)         python -m ilct_jax.main --config=configs/celeba.py --workdir=$R/no_ot --config.coupling.method=none ;;
  *) grep -oE '^  [a-z_0-9]+\)' "$0" | tr -d ') ' ;;
esac
