#!/usr/bin/env bash
# One run over two processes on this machine (1 CPU device each, gloo), as a user sees it:
# process 1 is killed in epoch 2, process 0 stops with one line; both resume; the result
# equals one process with 2 devices; then a process whose peer never starts.
#   bash experiments/multihost_demo.sh > experiments/results/studies/multihost/session.txt 2>&1
# Needs MNIST (JAXMNIST_DATA_DIR or TFDS).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
args=(--epochs 2 --max-steps 40 --no-progress --out "$tmp")

# Runs the command once per process id in the background, each one's output prefixed.
start_both() {
  local address=127.0.0.1:$(port)
  echo "\$ $PY -m jaxmnist.train ${*//$tmp/\$tmp} --coordinator $address --num-processes 2 --process-id {0,1}"
  for i in 0 1; do
    ( "$PY" -m jaxmnist.train "$@" --coordinator "$address" --num-processes 2 --process-id $i \
        2>&1; echo "[exit code $?]" ) | sed -u "s/^/[process $i] /" &
  done
}

start_both "${args[@]}" --name two
until [ -d "$tmp/two/checkpoints/1" ]; do sleep 0.1; done
t0=$(date +%s.%N)
echo "# process 1 is killed (SIGKILL) during epoch 2"
pkill -KILL -f -- "--name two --coordinator .* --process-id 1$"
wait
echo "# process 0 stopped $(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)") s after the kill"
echo

start_both "${args[@]}" --name two --resume
wait
echo

echo "\$ XLA_FLAGS=--xla_force_host_platform_device_count=2 $PY -m jaxmnist.train ${args[*]//$tmp/\$tmp} --name one-process"
XLA_FLAGS=--xla_force_host_platform_device_count=2 "$PY" -m jaxmnist.train "${args[@]}" --name one-process
echo "[exit code $?]"
echo "# metrics.jsonl of the two runs, without the timings:"
for run in two one-process; do
  "$PY" -c "import json, sys; [print(sys.argv[1], {k: v for k, v in json.loads(l).items() if k not in ('seconds', 'train_images_per_s')}) for l in open(sys.argv[2])]" \
    "$run" "$tmp/$run/metrics.jsonl"
done
echo

address=127.0.0.1:$(port)
echo "\$ $PY -m jaxmnist.train ${args[*]//$tmp/\$tmp} --name alone --coordinator $address --num-processes 2 --process-id 0 --distributed-timeout 5   # process 1 never starts"
"$PY" -m jaxmnist.train "${args[@]}" --name alone --coordinator "$address" --num-processes 2 \
  --process-id 0 --distributed-timeout 5
echo "[exit code $?]"
