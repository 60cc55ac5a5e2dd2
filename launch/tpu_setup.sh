#!/usr/bin/env bash
# Copies this checkout to every worker of the slice and installs it (idempotent).
# Usage: NAME=ilct ZONE=us-central2-b bash launch/tpu_setup.sh
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}"
cd "$(dirname "$0")/.."
tar czf /tmp/ilct_jax.tgz --exclude=.git --exclude='*.egg-info' .
gcloud compute tpus tpu-vm scp /tmp/ilct_jax.tgz "$NAME":~/ --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command='
  set -e; mkdir -p ~/ilct_jax && tar xzf ~/ilct_jax.tgz -C ~/ilct_jax
  python3 -m venv ~/venv && . ~/venv/bin/activate
  pip install -q -U pip && pip install -q -e ~/ilct_jax[tpu]'
