#!/usr/bin/env bash
# The simulation's report bytes for the seeds a redesign must keep identical (issue 13):
# runs each seed and prints "sha256  seed N" of its report.json, the file that holds
# every figure and the SHA-256 of every uplink message (no wall-clock times).
#   scripts/sim-bytes.sh [OUTDIR] [SEED...]      default: a temp dir, seeds 1 3 6
# Compare two builds by running it on each and diffing the output. SIM_ARGS adds
# options to every run, e.g. the mixed buses (Modbus, IEC 62056-21, DLMS):
#   SIM_ARGS="--protocols mixed" scripts/sim-bytes.sh OUTDIR 1
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 3 6)
PY=${PY:-.venv/bin/python}
for seed in "${seeds[@]}"; do
  "$PY" -m sim.neighbourhood --meters 200 --days 30 --seed "$seed" ${SIM_ARGS:-} \
    --report "$out/seed$seed" > "$out/seed$seed.txt" 2>&1 || { cat "$out/seed$seed.txt"; exit 1; }
  echo "$(sha256sum < "$out/seed$seed/report.json" | cut -d' ' -f1)  seed $seed${SIM_ARGS:+ $SIM_ARGS}"
done
