#!/usr/bin/env bash
# One liteframe_jax job on a Cloud TPU slice (or several, over DCN) through queued resources: create the slice,
# wait until it is active, copy this repository's tracked files to every worker, install requirements.txt and jax[tpu] there,
# run the same `python -m liteframe_jax.main` on every worker (jax.distributed finds the topology itself),
# stream the workers' output here, and delete the slice at the end unless --keep.
#
#   launch/tpu_vm.sh --name ctd1 --zone us-east5-a --type v5p-64 --spot -- \
#       --config=configs/ctd.py:paper --workdir=/mnt/runs/ctd1 --config.teacher.init=/mnt/ckpt/InternVL3-8B-hf \
#       --config.data.videos=/mnt/videos
#
# Options: --name NAME (required), --zone ZONE (required), --type ACCELERATOR_TYPE (required, e.g. v5p-64),
# --version RUNTIME (default v2-alpha-tpuv5), --project PROJECT, --spot | --reserved (default: on-demand),
# --num-slices N (multi-slice: N slices named NAME-0 ... NAME-<N-1>), --keep (leave the slice up),
# --dry-run (print every command, run none). Everything after `--` goes to liteframe_jax.main.
# The workdir and data must be where every worker sees them (a disk mounted on every worker).
set -euo pipefail

name="" zone="" type="" version="v2-alpha-tpuv5" project="" tier="" slices=1 keep=0 dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --spot) tier="--spot"; shift ;;
    --reserved) tier="--reserved"; shift ;;
    --num-slices) slices=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    *) echo "tpu_vm.sh: unknown option $1 (flags for liteframe_jax.main go after --)" >&2; exit 2 ;;
  esac
done
for required in name zone type; do
  [[ -n "${!required}" ]] || { echo "tpu_vm.sh: --$required is required" >&2; exit 2; }
done
[[ $# -gt 0 ]] || { echo "tpu_vm.sh: give the liteframe_jax.main flags after --" >&2; exit 2; }
[[ "$slices" =~ ^[1-9][0-9]*$ ]] || { echo "tpu_vm.sh: --num-slices must be a positive integer" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
common=(--zone="$zone")
[[ -n "$project" ]] && common+=(--project="$project")

# run (or, with --dry-run, print) one command
run() {
  if ((dry)); then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

nodes=()
if ((slices == 1)); then
  nodes=("$name")
  create=(--node-id="$name")
else
  for ((i = 0; i < slices; i++)); do nodes+=("$name-$i"); done
  create=(--node-count="$slices" --node-prefix="$name")
fi

create_cmd=(gcloud compute tpus queued-resources create "$name" "${create[@]}" --accelerator-type="$type"
  --runtime-version="$version" "${common[@]}")
[[ -n "$tier" ]] && create_cmd+=("$tier")
run "${create_cmd[@]}"

# shellcheck disable=SC2329  # run by the EXIT trap
cleanup() {
  if ((keep)); then
    echo "tpu_vm.sh: slice $name kept; delete it with: gcloud compute tpus queued-resources delete $name --zone=$zone --force --quiet" >&2
  else
    run gcloud compute tpus queued-resources delete "$name" "${common[@]}" --force --quiet
  fi
}
trap cleanup EXIT

# wait until the queued resource is ACTIVE (a spot request may wait long; FAILED or SUSPENDED end the script)
state_cmd=(gcloud compute tpus queued-resources describe "$name" "${common[@]}" --format="value(state.state)")
if ((dry)); then
  run "${state_cmd[@]}"
else
  while true; do
    state=$("${state_cmd[@]}")
    echo "tpu_vm.sh: $name is ${state:-unknown}" >&2
    case "$state" in
      ACTIVE) break ;;
      FAILED | SUSPENDED) echo "tpu_vm.sh: queued resource $name is $state" >&2; exit 1 ;;
    esac
    sleep 30
  done
fi

# the repository's tracked files (not runs, caches or virtual environments), to every worker
bundle="${TMPDIR:-/tmp}/liteframe_jax-$name.tgz"
if ((dry)); then
  echo "git -C $(printf '%q' "$repo") ls-files -z | tar --null -czf $(printf '%q' "$bundle") -C $(printf '%q' "$repo") -T -"
else
  git -C "$repo" ls-files -z | tar --null -czf "$bundle" -C "$repo" -T -
fi
quoted=$(printf '%q ' "$@")
setup="mkdir -p ~/liteframe_jax && tar -xzf ~/liteframe_jax.tgz -C ~/liteframe_jax && cd ~/liteframe_jax"
setup+=" && python3 -m pip install -q -r requirements.txt 'jax[tpu]' gcsfs"
job="cd ~/liteframe_jax && LITEFRAME_DISTRIBUTED=auto python3 -m liteframe_jax.main $quoted"
for node in "${nodes[@]}"; do
  run gcloud compute tpus tpu-vm scp "$bundle" "$node:~/liteframe_jax.tgz" --worker=all "${common[@]}"
  run gcloud compute tpus tpu-vm ssh "$node" --worker=all "${common[@]}" --command="$setup"
done
# every worker of every slice runs the same command; their output streams here, prefixed by gcloud per worker
pids=()
for node in "${nodes[@]}"; do
  if ((dry)); then
    run gcloud compute tpus tpu-vm ssh "$node" --worker=all "${common[@]}" --command="$job"
  else
    gcloud compute tpus tpu-vm ssh "$node" --worker=all "${common[@]}" --command="$job" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
