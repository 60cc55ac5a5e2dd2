#!/usr/bin/env bash
# Runs one training command on every worker of a TPU slice (multi-host JAX).
# Data, latents, VAE and stats must be on a path every worker can read
# (e.g. a GCS bucket via gcsfuse, or copied to each worker).
# Usage: NAME=ilct ZONE=us-central2-b CONFIG=configs/celeba.py \
#          WORKDIR=gs://bucket/runs/celeba bash launch/tpu_run.sh [--config.x=y ...]
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  . ~/venv/bin/activate && cd ~/ilct_jax &&
  python -m ilct_jax.main --distributed --config=$CONFIG --workdir=$WORKDIR $*"
