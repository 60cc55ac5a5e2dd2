#!/usr/bin/env bash
# Trains on one machine with all its GPUs: a single process drives every
# local GPU (no SLURM, no --distributed); train.batch_size, the global batch,
# is split over them. Restrict the GPUs with CUDA_VISIBLE_DEVICES=0,1,2,3.
#
# Usage: CONFIG=configs/celeba.py WORKDIR=runs/celeba \
#          bash launch/gpu_local.sh [OVERRIDE ...]
# OVERRIDE arguments reach `python -m ilct_jax.main` unchanged. Exit code 0:
# finished; 75: stopped by SIGTERM after saving a checkpoint (run the same
# command again to resume).
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec python -m ilct_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
