#!/usr/bin/env bash
# Starts, follows, inspects or stops one training run on every worker of a
# Cloud TPU slice (one process per TPU VM host, multi-host JAX).
#
# Usage (from the repository root, after tpu_create.sh and tpu_setup.sh):
#   NAME=ilct ZONE=us-central2-b CONFIG=configs/celeba.py \
#     WORKDIR=gs://BUCKET/runs/celeba bash launch/tpu_run.sh [OVERRIDE ...]
#   ACTION=logs   NAME=ilct ZONE=us-central2-b RUN=celeba bash launch/tpu_run.sh
#   ACTION=status NAME=ilct ZONE=us-central2-b RUN=celeba bash launch/tpu_run.sh
#   ACTION=stop   NAME=ilct ZONE=us-central2-b RUN=celeba bash launch/tpu_run.sh
#
# OVERRIDE arguments go to the job's program unchanged, one argument each,
# e.g. '--config.ema.decays=(0.999,0.9999)' '--config.ct.loss=huber'.
#
# JOB picks the program (default train):
#   train | sample | eval | sweep   python -m ilct_jax.main --mode=JOB on every
#                                   worker; sample, eval and sweep read the
#                                   run's config.json when CONFIG is unset
#   encode                          python -m ilct_jax.data.encode (CONFIG)
#   features                        python -m ilct_jax.evaluation.features,
#                                   worker 0 only (one process)
#   preflight                       python -m ilct_jax.preflight (CONFIG),
#                                   worker 0 only
# When WORKDIR is on gs:// and no --compile_cache is given, the compile cache
# is WORKDIR/compile_cache (shared by the workers and by restarts). When the
# job ends, each worker copies its log to WORKDIR/logs/RUN.HOSTNAME.log.
#
# Environment:
#   NAME, ZONE   the TPU (required); PROJECT: gcloud project (optional)
#   ACTION       run (default) | logs | status | stop
#   JOB          train (default) | sample | eval | sweep | encode | features
#                | preflight (above)
#   CONFIG       config file, relative to the repository, or a short name
#                (required for train, encode and preflight)
#   WORKDIR      run directory (required for train, sample, eval, sweep). On
#                a multi-host slice it must be shared by all workers: use
#                gs://BUCKET/...
#   RUN          name of the run's log and pid files (default: the last part
#                of WORKDIR, plus -JOB for jobs other than train, or JOB
#                without a WORKDIR; logs/status/stop need RUN or WORKDIR)
#   WORKER       worker whose log ACTION=logs follows (default 0)
#   ILCT_PRINT_REMOTE=1  print the command the workers would run, and exit
#
# ACTION=run starts the job detached on each worker (nohup + setsid, stdin
# from /dev/null), so it survives the ssh session ending. On each worker:
#   ~/ilct_logs/RUN.log   the process's output; a last line
#                         "[tpu_run] ... exit code N" when it ends
#                         (0 finished, 75 preempted/stopped after a checkpoint,
#                         73 disk full, 74 storage unreachable, 65 a bad data
#                         record: ilct_jax/faults.py; 1 a crash)
#   ~/ilct_logs/RUN.pid   its process group id
# The workers run as bash scripts under ~/ilct_jax with ~/venv (tpu_setup.sh).
# ACTION=stop sends SIGTERM to the job on every worker: the run saves a
# checkpoint at its current step and exits 75. Start the same command again
# to resume from that checkpoint (the log is appended to).
set -euo pipefail

ACTION="${ACTION:-run}"
WORKER="${WORKER:-0}"
JOB="${JOB:-train}"

die() {
  echo "tpu_run.sh: $*" >&2
  exit 2
}

# Sets RUN_NAME: RUN, else the last component of WORKDIR.
set_run_name() {
  RUN_NAME="${RUN:-}"
  if [[ -z "$RUN_NAME" && -n "${WORKDIR:-}" ]]; then
    RUN_NAME="${WORKDIR%/}"
    RUN_NAME="${RUN_NAME##*/}"
    if [[ "$JOB" != train ]]; then  # Beside the training's own log.
      RUN_NAME="$RUN_NAME-$JOB"
    fi
  fi
  [[ -n "$RUN_NAME" ]] || die "set RUN (or WORKDIR)"
  [[ "$RUN_NAME" =~ ^[A-Za-z0-9._-]+$ ]] ||
    die "RUN='$RUN_NAME': use letters, digits and ._-"
}

# Shared prelude of every remote command: file names of run RUN_NAME.
remote_prelude() {
  printf 'run=%q\n' "$RUN_NAME"
  cat <<'EOF'
set -eu
logs="$HOME/ilct_logs"
log="$logs/$run.log"
pidf="$logs/$run.pid"
running() {  # the job of $pidf is alive (a zombie is not)
  [ -s "$pidf" ] || return 1
  s="$(ps -o stat= -p "$(cat "$pidf")" 2>/dev/null)" || return 1
  case "$s" in Z* | "") return 1 ;; esac
}
EOF
}

# The bash script each worker runs for ACTION=run; "$@" are the overrides.
# Every argument is quoted with printf %q into a bash array literal, so each
# one reaches python as exactly one, byte-identical argument. The job is a
# bash that records its pid (= its process group id, after setsid), runs
# python and appends python's exit code to the log; it traps SIGTERM (a
# handler, not SIG_IGN, so python still gets the default) to outlive python.
remote_run_command() {
  remote_prelude
  local -a cmd
  case "$JOB" in
    train | sample | eval | sweep)
      cmd=(python -m ilct_jax.main --distributed)
      if [[ "$JOB" != train ]]; then
        cmd+=("--mode=$JOB")
      fi
      ;;
    encode) cmd=(python -m ilct_jax.data.encode --distributed) ;;
    features) cmd=(python -m ilct_jax.evaluation.features) ;;
    preflight) cmd=(python -m ilct_jax.preflight) ;;
  esac
  if [[ -n "${CONFIG:-}" ]]; then
    cmd+=("--config=$CONFIG")
  fi
  if [[ -n "${WORKDIR:-}" && "$JOB" != features && "$JOB" != preflight ]]; then
    cmd+=("--workdir=$WORKDIR")
  fi
  if [[ "${WORKDIR:-}" == gs://* && "$JOB" != features ]] &&
    ! printf '%s\n' "$@" | grep -q '^--compile_cache'; then
    cmd+=("--compile_cache=${WORKDIR%/}/compile_cache")
  fi
  printf 'dest=%q\n' "${WORKDIR:+${WORKDIR%/}/logs}"
  printf 'cmd=('
  printf ' %q' "${cmd[@]}" "$@"
  printf ' )\n'
  cat <<'EOF'
mkdir -p "$logs"
if running; then
  echo "$(hostname): $run is already running (pid $(cat "$pidf"))" >&2
  exit 1
fi
cd "$HOME/ilct_jax"
set +u
. "$HOME/venv/bin/activate"
set -u
job='echo "$$" > "$1"; log="$2"; dest="$3"; shift 3
trap : TERM
"$@"
rc=$?
echo "[tpu_run] $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) exit code $rc"
if [ -n "$dest" ]; then  # This worker log, beside the run.
  to="$dest/$(basename "$log" .log).$(hostname).log"
  case "$dest" in
    gs://*) gcloud storage cp -q "$log" "$to" ;;
    *) mkdir -p "$dest" && cp "$log" "$to" ;;
  esac || echo "[tpu_run] could not copy the log to $to"
fi
exit "$rc"'
echo "[tpu_run] $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) start:$(printf ' %q' "${cmd[@]}")" >> "$log"
nohup setsid bash -c "$job" tpu_run "$pidf" "$log" "$dest" "${cmd[@]}" >> "$log" 2>&1 < /dev/null &
echo "$(hostname): started $run, log $log"
EOF
}

remote_logs_command() {
  remote_prelude
  cat <<'EOF'
exec tail -n 200 -F "$log"
EOF
}

remote_status_command() {
  remote_prelude
  cat <<'EOF'
if running; then
  echo "$(hostname): $run running (pid $(cat "$pidf"))"
else
  echo "$(hostname): $run not running"
fi
tail -n 3 "$log" 2>/dev/null || true
EOF
}

remote_stop_command() {
  remote_prelude
  cat <<'EOF'
if running && kill -TERM -- "-$(cat "$pidf")" 2>/dev/null; then
  echo "$(hostname): sent SIGTERM to $run (pid $(cat "$pidf")); it saves a checkpoint and exits 75"
else
  echo "$(hostname): $run is not running"
fi
EOF
}

# gcloud ssh on workers $1 (all or an index) running the bash script $2.
ssh_workers() {
  local -a opts=(--zone="$ZONE" --worker="$1")
  if [[ -n "${PROJECT:-}" ]]; then
    opts+=(--project="$PROJECT")
  fi
  gcloud compute tpus tpu-vm ssh "$NAME" "${opts[@]}" --command="$2"
}

main() {
  : "${NAME:?set NAME}" "${ZONE:?set ZONE}"
  if [[ "$ACTION" == run ]]; then
    case "$JOB" in
      train) : "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}" ;;
      sample | eval | sweep) : "${WORKDIR:?set WORKDIR}" ;;
      encode | preflight) : "${CONFIG:?set CONFIG}" ;;
      features) ;;
      *) die "JOB=$JOB: use train, sample, eval, sweep, encode, features or preflight" ;;
    esac
  fi
  if [[ -z "${RUN:-}" && -z "${WORKDIR:-}" && "$ACTION" == run ]]; then
    RUN="$JOB"
  fi
  set_run_name
  local cmd workers=all
  case "$ACTION" in
    run)
      cmd="$(remote_run_command "$@")"
      if [[ "$JOB" == features || "$JOB" == preflight ]]; then
        workers=0
      fi
      ;;
    logs)
      cmd="$(remote_logs_command)"
      workers="$WORKER"
      ;;
    status) cmd="$(remote_status_command)" ;;
    stop) cmd="$(remote_stop_command)" ;;
    *) die "ACTION=$ACTION: use run, logs, status or stop" ;;
  esac
  if [[ "$ACTION" != run && $# -gt 0 ]]; then
    die "ACTION=$ACTION takes no arguments"
  fi
  if [[ "${ILCT_PRINT_REMOTE:-0}" == 1 ]]; then
    printf '%s\n' "$cmd"
    return
  fi
  if [[ "$ACTION" == run && -n "${WORKDIR:-}" && "$WORKDIR" != gs://* ]]; then
    echo "tpu_run.sh: warning: WORKDIR=$WORKDIR is not gs://; on a" \
      "multi-host slice every worker must see the same workdir" >&2
  fi
  ssh_workers "$workers" "$cmd"
  if [[ "$ACTION" == run ]]; then
    local env
    env="NAME=$(printf %q "$NAME") ZONE=$(printf %q "$ZONE")"
    env+="${PROJECT:+ PROJECT=$(printf %q "$PROJECT")} RUN=$RUN_NAME"
    cat <<EOF
Started on every worker of $NAME; each writes ~/ilct_logs/$RUN_NAME.log.
  follow worker 0: ACTION=logs $env bash launch/tpu_run.sh
  state:           ACTION=status $env bash launch/tpu_run.sh
  stop (saves a checkpoint, exit 75):
                   ACTION=stop $env bash launch/tpu_run.sh
EOF
  fi
}

main "$@"
