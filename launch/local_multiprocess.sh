#!/usr/bin/env bash
# Run one job as N cooperating processes on this machine through jax.distributed (CPU: gloo collectives).
# The same flags work across hosts: give every process the coordinator's host:port and its own index.
#   launch/local_multiprocess.sh 2 --config=configs/ctd.py --workdir=runs/ctd_mp
set -euo pipefail
n=${1:?usage: $0 NUM_PROCESSES [main.py flags...]}
shift
port=${LITEFRAME_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  "${PYTHON:-python}" -m liteframe_jax.main --coordinator_address="localhost:${port}" --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
