#!/usr/bin/env bash
# Start or resume one UPS run under torchrun, the same way on every machine of a job.
# Used by deploy/skypilot/train.yaml and deploy/slurm/train.sbatch; usable by hand.
#
# Environment (UPS_CONFIG and UPS_RUN_DIR are required):
#   UPS_CONFIG     experiment config, e.g. configs/burgers1d.yaml
#   UPS_RUN_DIR    the run directory, on storage that outlives the machine (a mounted bucket, a
#                  shared file system). Exists with config.yaml -> the run is resumed (--resume).
#   UPS_COMMAND    train (default) or pipeline (train, then gate/evaluate/report on rank 0)
#   UPS_OVERRIDES  dotted overrides for a new run, e.g. "training.epochs=50 data.batch_size=64"
#   NNODES         machines in the job (default 1); NPROC processes per machine (default: its GPUs)
#   NODE_RANK, MASTER_ADDR, MASTER_PORT   this machine's rank and the first machine (NNODES > 1)
#   UPS_PYTHON     the interpreter (default .venv/bin/python, what `make install` creates)
#   UPS_DRY_RUN=1  print the commands instead of running them
# Exit status: the run's (130 when it was interrupted and saved its state: run this script again).
set -euo pipefail
: "${UPS_CONFIG:?set UPS_CONFIG to the experiment config}"
: "${UPS_RUN_DIR:?set UPS_RUN_DIR to a run directory on persistent storage}"
command=${UPS_COMMAND:-train}
py=${UPS_PYTHON:-.venv/bin/python}
nnodes=${NNODES:-1}
case "$command" in train|pipeline) ;; *) echo "error: UPS_COMMAND=$command: use train or pipeline" >&2; exit 2 ;; esac

launcher=("$py" -m torch.distributed.run --nproc-per-node="${NPROC:-gpu}")
if [ "$nnodes" -gt 1 ]; then
  : "${MASTER_ADDR:?set MASTER_ADDR to the first machine}"
  launcher+=(--nnodes="$nnodes" --node-rank="${NODE_RANK:?set NODE_RANK}" --master-addr="$MASTER_ADDR"
             --master-port="${MASTER_PORT:-29500}")
else
  launcher+=(--standalone)
fi

# torchrun exits 1 when it is itself signalled; report 130 (interrupted, state saved) as `ups train` does
interrupted=0
trap 'interrupted=1' TERM INT
run() {
  if [ "${UPS_DRY_RUN:-0}" = 1 ]; then echo "$*"; return 0; fi
  local status=0
  "$@" || status=$?
  if [ "$interrupted" = 1 ]; then exit 130; fi
  if [ "$status" != 0 ]; then exit "$status"; fi
}

# Decide before torchrun starts: the run directory appears only after every machine has joined.
if [ -f "$UPS_RUN_DIR/config.yaml" ]; then
  if [ "$command" = pipeline ] && [ -f "$UPS_RUN_DIR/report.html" ]; then
    echo "$UPS_RUN_DIR is finished (report.html exists)"; exit 0
  fi
  run "${launcher[@]}" -m ups train "$UPS_CONFIG" --resume "$UPS_RUN_DIR"
  if [ "$command" = pipeline ] && [ "${NODE_RANK:-0}" = 0 ]; then
    run "$py" -m ups eval "$UPS_RUN_DIR"   # a resumed pipeline: evaluate and report on one process
  fi
else
  mkdir -p "$(dirname "$UPS_RUN_DIR")"
  # shellcheck disable=SC2086  (overrides are words)
  run "${launcher[@]}" -m ups "$command" "$UPS_CONFIG" ${UPS_OVERRIDES:-} --run-dir "$UPS_RUN_DIR"
fi
