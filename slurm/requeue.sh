#!/usr/bin/env bash
# Batch-level wrapper of a longweave SLURM job:  requeue.sh srun ... python -m launch local ...
#
# - Runs the job step in the background so that signals reach this script while it waits.
# - USR1 (sent by `#SBATCH --signal=B:USR1@lead` before the time limit) or TERM: forwarded as
#   USR1 to the step; srun passes it to the per-node launchers, which pass it to the trainer.
#   The trainer's ranks agree on a step boundary, save a checkpoint and exit 75.
# - Step exit 75 (checkpoint saved, work left): `scontrol requeue` puts the job back in the
#   queue; its next start resumes with --resume auto. LONGWEAVE_MAX_REQUEUES caps the loop.
# - Any other code is the job's exit code, unless $LONGWEAVE_RUN_DIR/exit.json, written by the trainer
#   during this run, says it stopped with 75 (see below).
set -u
REQUEUE_EXIT_CODE=75
max_requeues=${LONGWEAVE_MAX_REQUEUES:-20}
restarts=${SLURM_RESTART_COUNT:-0}
job=${SLURM_JOB_ID:-}
log() { echo "[requeue.sh $(date -u +%H:%M:%S)] $*"; }

started=$(date +%s)
log "job ${job:-?} start ${restarts} on $(hostname): $*"
"$@" &
step=$!
interrupted=0
forward() {
  interrupted=1
  log "$1 received: asking the training step to save a checkpoint and stop"
  kill -s USR1 "$step" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
while :; do
  interrupted=0
  wait "$step"
  rc=$?
  # a trap interrupts `wait` (status > 128): keep waiting while the step still runs
  [ "$interrupted" -eq 1 ] && kill -0 "$step" 2>/dev/null && continue
  [ "$interrupted" -eq 1 ] && [ "$rc" -gt 128 ] && { wait "$step" 2>/dev/null; rc=$?; }
  break
done
log "training step exited with $rc"
# On several nodes srun --kill-on-bad-exit may kill the slower nodes' launchers (exit 143) once the
# first one has exited 75, so the step's code is not reliable: the trainer's own record decides.
record="${LONGWEAVE_RUN_DIR:-}/exit.json"
if [ "$rc" -ne "$REQUEUE_EXIT_CODE" ] && [ -n "${LONGWEAVE_RUN_DIR:-}" ] && [ -f "$record" ] \
   && [ "$(stat -c %Y "$record")" -ge "$((started - 5))" ] \
   && grep -q "\"exit_code\": $REQUEUE_EXIT_CODE" "$record"; then
  log "the trainer saved a checkpoint and asked to be requeued ($record); treating the step as exit 75"
  rc=$REQUEUE_EXIT_CODE
fi
if [ "$rc" -eq "$REQUEUE_EXIT_CODE" ]; then
  if [ -z "$job" ]; then
    log "not inside a SLURM job; nothing to requeue"
    exit "$rc"
  fi
  if [ "$restarts" -ge "$max_requeues" ]; then
    log "already requeued $restarts times (LONGWEAVE_MAX_REQUEUES=$max_requeues); not requeueing again"
    exit "$rc"
  fi
  log "checkpoint saved; requeueing job $job (restart $((restarts + 1)))"
  scontrol requeue "$job" && exit 0
  log "scontrol requeue failed: if the scheduler requeued the job itself (scontrol requeue, preemption) it is"
  log "back in squeue; otherwise resubmit with: python -m launch resume <run dir>"
fi
exit "$rc"
