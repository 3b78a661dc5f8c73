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
# The first process to end with an error ends the job: the others get 10 s to say their own, then are stopped
# (as srun --kill-on-bad-exit does), so none waits on a collective with a process that is gone.
status=0
running=("${pids[@]}")
while ((${#running[@]})); do
  ended=
  wait -n -p ended "${running[@]}" || { status=$?; break; }
  still=()
  for pid in "${running[@]}"; do [[ $pid == "$ended" ]] || still+=("$pid"); done
  running=("${still[@]}")
done
if ((status != 0 && status != 75)); then
  for ((t = 0; t < 20; t++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
fi
wait || true
exit "$status"
