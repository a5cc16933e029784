#!/usr/bin/env bash
# One command for a machine where JAX with a GPU or TPU backend is already installed and
# nothing can be downloaded: installs the project's missing dependencies from the wheels
# in experiments/carry/wheels (experiments/carry_wheels.sh gathers them), reads MNIST
# from experiments/carry/mnist, then prints the devices, runs the tests that make sense
# there, benchmarks one step per call against lax.scan over a whole epoch, times the
# default recipe (20 epochs, what `make train` runs; then again with a whole epoch per
# jitted call) and `fast`, and what an epoch costs besides training. Every result goes
# into one folder (8 files at most).
#
#   bash experiments/accelerator_check.sh [--dry-run] [OUT]
#
# OUT defaults to experiments/results/studies/accelerators/<backend>. --dry-run runs the same
# steps with tiny budgets (1 epoch of a few steps, a few benchmark steps), as the test
# suite does on the CPU. The project itself is used from this checkout (PYTHONPATH), so
# the runtime's own jax, jaxlib and plugins are never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
py=${PYTHON:-python3}
carry=experiments/carry
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAXMNIST_DATA_DIR=${JAXMNIST_DATA_DIR:-$carry/mnist}
backend=$("$py" -c "import jax; print(jax.default_backend())")
out=${1:-experiments/results/studies/accelerators/$backend}
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export TFDS_DATA_DIR="$scratch/tfds"

step() { echo "--- $*" | tee -a "$out/timing.txt"; }
: > "$out/timing.txt"

# 1. What the runtime lacks, from carried wheels (never from an index).
missing=$("$py" - <<'EOF'
import importlib.util
needed = ["tensorflow_datasets", "array_record", "importlib_resources", "immutabledict",
          "promise", "simple_parsing", "tensorflow_metadata", "termcolor", "toml", "tree"]
print(" ".join(m for m in needed if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  if ! ls "$carry"/wheels/*.whl >/dev/null 2>&1; then
    echo "accelerator_check: missing $missing and no wheels in $carry/wheels" \
         "(run experiments/carry_wheels.sh where there is network)" >&2
    exit 2
  fi
  step "installing from $carry/wheels: $missing"
  "$py" -m pip install --quiet --no-index --no-deps "$carry"/wheels/*.whl
fi

# 2. The devices.
"$py" - > "$out/devices.txt" <<'EOF'
import jax
print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
      f"{jax.device_count()} device(s), {jax.process_count()} process(es)")
for d in jax.devices():
    print(f"  {d.platform}:{d.id}  {d.device_kind}")
EOF
cat "$out/devices.txt"

# 3. The tests that make sense on an accelerator: the model, the kernels against the
#    Flax ops they replace, the data pipeline, a short real run, determinism.
if [ $dry = 1 ]; then tests=(tests/test_models.py -k "parameter_count or layer_table")
else tests=(tests/test_models.py tests/test_kernels.py tests/test_data.py
            tests/test_train.py -k "not cli and not tensorflow and not ynnpack and not resume")
fi
step "pytest ${tests[*]}"
SECONDS=0
"$py" -m pytest -q -p no:cacheprovider "${tests[@]}" > "$out/pytest.txt" 2>&1 \
  || echo "pytest failed: see $out/pytest.txt" | tee -a "$out/timing.txt"
tail -n 1 "$out/pytest.txt" | tee -a "$out/timing.txt"
echo "pytest: ${SECONDS}s" >> "$out/timing.txt"

# 4. One step per call (the Python loop) against lax.scan over a whole epoch.
if [ $dry = 1 ]; then steps=4; epoch=2; else steps=936; epoch=468; fi
: > "$out/bench.jsonl"
for scan in 1 "$epoch"; do
  step "bench --scan $scan"
  "$py" -m jaxmnist.bench --no-record --steps "$steps" --scan "$scan" >> "$out/bench.jsonl"
done

# 5. The recipes, timed as whole commands (start-up, data and compilation included).
if [ $dry = 1 ]; then budget=(--epochs 1 --max-steps 5); else budget=(); fi
# timed_train LABEL ARGS...: one `jaxmnist.train` run, its last line and its time.
timed_train() {
  local label=$1; shift
  step "python -m jaxmnist.train $* ${budget[*]}"
  SECONDS=0
  "$py" -m jaxmnist.train "$@" --out "$scratch/runs" --no-progress "${budget[@]}" 2>&1 \
    | tail -n 1 | tee -a "$out/timing.txt"
  echo "$label: ${SECONDS}s for the whole command" >> "$out/timing.txt"
}
for recipe in default fast; do
  timed_train "$recipe" --recipe "$recipe"
  cp "$scratch/runs/$recipe/metrics.jsonl" "$out/$recipe-metrics.jsonl"
done
cp "$scratch/runs/default/curves.png" "$out/default-curves.png"
# The default recipe again, a whole epoch per jitted call (lax.scan): same steps, fewer
# dispatches; if it wins here, this backend should train that way.
timed_train "default --steps-per-call $epoch" --recipe default --name default-scan \
  --steps-per-call "$epoch"

# 6. What an epoch costs besides training (evaluation, checkpoint, curves).
step "experiments/epoch_overhead.py"
"$py" experiments/epoch_overhead.py --repeats $([ $dry = 1 ] && echo 1 || echo 5) \
  --out "$out/epoch_overhead.json" > /dev/null
echo "results in $out:"
ls "$out"
