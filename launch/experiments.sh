#!/usr/bin/env bash
# Every paper run and ablation (ALGORITHM.md §13 and §16), one line each.
#
# Usage:
#   bash launch/experiments.sh list                  # the run names
#   [RUNS=DIR] [LAUNCH=...] bash launch/experiments.sh RUN [OVERRIDE ...]
#
# RUNS is the parent of every workdir (default runs; e.g. gs://BUCKET/runs):
# run RUN writes to RUNS/RUN. OVERRIDE arguments are appended to the run's
# own (for the same field the last one wins), e.g. --config.train.num_steps=10.
# LAUNCH picks where it runs:
#   python     (default) here: python -m ilct_jax.main, all local devices
#   gpu_local  launch/gpu_local.sh (the same, with its GPU memory setting)
#   tpu_run    launch/tpu_run.sh on every worker of the TPU given by the
#              NAME and ZONE environment variables (log name RUN)
#   slurm      sbatch launch/gpu_slurm.sbatch, job name ilct_RUN
set -euo pipefail
R="${RUNS:-runs}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EXP="${1:-list}"
if [[ $# -gt 0 ]]; then
  shift
fi
EXTRA=("$@")

# start CONFIG [OVERRIDE ...]: run EXP with workdir RUNS/EXP.
start() {
  local config="$1"
  shift
  local -a args=("$@" ${EXTRA[@]+"${EXTRA[@]}"})
  export CONFIG="$config" WORKDIR="$R/$EXP"
  case "${LAUNCH:-python}" in
    python)
      exec python -m ilct_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
        ${args[@]+"${args[@]}"}
      ;;
    gpu_local | tpu_run)
      exec bash "$HERE/$LAUNCH.sh" ${args[@]+"${args[@]}"}
      ;;
    slurm)
      exec sbatch --job-name="ilct_$EXP" "$HERE/gpu_slurm.sbatch" \
        ${args[@]+"${args[@]}"}
      ;;
    *)
      echo "experiments.sh: LAUNCH=$LAUNCH: use python, gpu_local," \
        "tpu_run or slurm" >&2
      exit 2
      ;;
  esac
}

list_runs() {
  grep -oE '^  [a-z_0-9]+\) +start ' "${BASH_SOURCE[0]}" | cut -d')' -f1 |
    tr -d ' '
}

C=configs/celeba.py # The ablations change one thing of the CelebA-HQ run.
case "$EXP" in
  celeba)        start configs/celeba.py ;;
  lsun_church)   start configs/lsun_church.py ;;
  ffhq)          start configs/ffhq.py ;;
  ilct_baseline) start configs/ilct_baseline.py ;;
  # The authors' FFHQ baseline (no Table 1 number).
  ilct_baseline_ffhq) start configs/ilct_baseline_ffhq.py ;;
  # The variants the paper argues for, where the number's run differs:
  # NsLN on LSUN (the number's run used GroupNorm), FFHQ as the `ot` script.
  lsun_nsln)     start configs/lsun_church.py --config.model.norm=nsln ;;
  ffhq_bs256)    start configs/ffhq.py --config.train.batch_size=256 ;;
  # Robust loss (everything else fixed): Cauchy 7.27, pseudo-Huber 9.97, GM 11.28.
  loss_huber)    start "$C" --config.ct.loss=huber ;;
  loss_gm)       start "$C" --config.ct.loss=gm ;;
  # Diffusion loss off / threshold 0.40.
  no_diff)       start "$C" --config.ct.diffusion_loss=False ;;
  diff_040)      start "$C" --config.ct.diffusion_threshold=0.4 ;;
  # Constant c multiples of c0 instead of the adaptive schedule.
  c_001)         start "$C" --config.ct.c_schedule=constant --config.ct.c_mult=0.01 ;;
  c_3)           start "$C" --config.ct.c_schedule=constant --config.ct.c_mult=3 ;;
  # Normalization of every UNet norm layer.
  norm_group)    start "$C" --config.model.norm=group ;;
  norm_layer)    start "$C" --config.model.norm=layer ;;
  norm_rms)      start "$C" --config.model.norm=rms ;;
  norm_instance) start "$C" --config.model.norm=instance ;;
  # OT pairing off.
  no_ot)         start "$C" --config.coupling.method=none ;;
  list) list_runs ;;
  *)
    echo "experiments.sh: unknown run '$EXP'; one of:" >&2
    list_runs >&2
    exit 2
    ;;
esac
