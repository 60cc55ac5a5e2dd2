#!/usr/bin/env bash
# Creates a Cloud TPU VM slice for ilct_jax.
# Usage: NAME=ilct ZONE=us-central2-b TYPE=v4-32 bash launch/tpu_create.sh
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}"
TYPE="${TYPE:-v4-8}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" \
  --accelerator-type="$TYPE" --version="$VERSION" ${SPOT:+--spot}
