#!/usr/bin/env bash
# Creates a Cloud TPU VM slice for ilct_jax, directly or through a queued
# resource.
#
# Usage:
#   NAME=ilct ZONE=us-central2-b TYPE=v4-32 bash launch/tpu_create.sh
#   NAME=ilct ZONE=us-central2-b TYPE=v4-32 QUEUED=1 SPOT=1 \
#     bash launch/tpu_create.sh        # spot capacity, queued until granted
#
# Environment:
#   NAME, ZONE  the TPU's name and zone (required)
#   TYPE        accelerator type (default v4-8)
#   PROJECT     gcloud project (default: gcloud's configured project)
#   VERSION     TPU software (runtime) version. Default by TYPE, as Google
#               recommends for JAX: v6e-* -> v2-alpha-tpuv6e, v5p-* ->
#               v2-alpha-tpuv5, v5litepod-* -> v2-alpha-tpuv5-lite, anything
#               else (v4 and older) -> tpu-ubuntu2204-base. All of these are
#               Ubuntu 22.04 with Python 3.10; tpu_setup.sh installs its own
#               Python 3.11 for jax 0.10.
#   QUEUED=1    create through `gcloud compute tpus queued-resources create`:
#               the request waits in a queue until capacity is free, then
#               the node NAME appears (state ACTIVE). Default 0: create the
#               VM directly (fails at once when there is no capacity).
#   SPOT=1      spot (preemptible) capacity, cheaper; the TPU can be
#               reclaimed at any time (training then exits 75 after a
#               checkpoint when it gets SIGTERM in time; rerun tpu_run.sh).
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}"
TYPE="${TYPE:-v4-8}"
QUEUED="${QUEUED:-0}"
SPOT="${SPOT:-0}"

default_version() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}
VERSION="${VERSION:-$(default_version "$TYPE")}"

for v in QUEUED SPOT; do
  if [[ "${!v}" != 0 && "${!v}" != 1 ]]; then
    echo "tpu_create.sh: $v=${!v}: use 0 or 1" >&2
    exit 2
  fi
done

opts=(--zone="$ZONE" --accelerator-type="$TYPE")
if [[ -n "${PROJECT:-}" ]]; then
  opts+=(--project="$PROJECT")
fi
if [[ "$SPOT" == 1 ]]; then
  spot=(--spot)
else
  spot=()
fi
where="--zone=$ZONE${PROJECT:+ --project=$PROJECT}"

if [[ "$QUEUED" == 1 ]]; then
  gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" \
    "${opts[@]}" --runtime-version="$VERSION" ${spot[@]+"${spot[@]}"}
  cat <<EOF
Queued resource $NAME requested ($TYPE, $VERSION${spot:+, spot}).
  state (WAITING_FOR_RESOURCES -> PROVISIONING -> ACTIVE):
    gcloud compute tpus queued-resources describe $NAME $where
  when ACTIVE: NAME=$NAME ZONE=$ZONE bash launch/tpu_setup.sh
  release it (also after a spot preemption, before requesting again):
    gcloud compute tpus queued-resources delete $NAME $where --force
EOF
else
  gcloud compute tpus tpu-vm create "$NAME" "${opts[@]}" \
    --version="$VERSION" ${spot[@]+"${spot[@]}"}
  cat <<EOF
TPU $NAME created ($TYPE, $VERSION${spot:+, spot}).
  next: NAME=$NAME ZONE=$ZONE bash launch/tpu_setup.sh
  delete: gcloud compute tpus tpu-vm delete $NAME $where
EOF
fi
