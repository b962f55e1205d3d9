#!/usr/bin/env bash
# The GPU paths of every family, in one call on a lent device (`run` tool): for each embedded tiny twin the main job
# on CUDA with `--dtype auto` (the stored dtype on CUDA: the tiny twins are built in float32) and in bfloat16, the
# reference overfit trained and rendered there, each run's wall time and results.json kept under $OUT.
# DEVICE=cpu runs the same script here, to check it before a device is spent on it.
set -euo pipefail
cd "$(dirname "$0")/.."
device=${DEVICE:-cuda}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
bases=$(python -c "from lora_harness.bases.families import EMBEDDED_BASES; print(' '.join(EMBEDDED_BASES))")
printf '%-15s %-9s %6s %s\n' base dtype wall verdicts
for base in $bases; do
    for dtype in auto bfloat16; do
        run="$out/$base-$dtype"
        started=$(date +%s.%N)
        status=0
        (cd "$(mktemp -d)" && python -m pytest --adapter reference --base-model "$base" --device "$device" --dtype "$dtype" \
            --report-dir "$run" -q -p no:cacheprovider) > "$run.log" 2>&1 || status=$?
        wall=$(python -c "import time; print(f'{time.time() - $started:.1f}')")
        verdicts=$(python -c "
import json, sys
d = json.load(open('$run/results.json'))
print(d['base']['dtype'], d['controls']['status'], ' '.join(f\"{r['check']}={r['status']}\" for r in d['results']))
" 2>/dev/null || echo "no results.json (exit $status; see $run.log)")
        printf '%-15s %-9s %6s %s\n' "$base" "$dtype" "$wall" "exit=$status $verdicts"
    done
done
