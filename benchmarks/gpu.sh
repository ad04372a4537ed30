#!/usr/bin/env bash
# Every benchmark on CUDA, one JSON: scan throughput (the auto, eager, compiled/Triton
# kernels), the Monitor's training overhead, the zoo models with the peers, the lab
# trainer, the activations, and an LLM scan benchmark where one exists.
#
# Usage: benchmarks/gpu.sh [--quick] [--out FILE]     (default FILE: gpu_benchmarks.json)
# Env:   PYTHON (default: .venv/bin/python if present, else python3), DEVICE (default cuda)
#
# Fails (exit 2) before running anything when torch sees no CUDA device. Each benchmark's
# JSON goes under "benchmarks.<name>"; one that fails is recorded with its exit status and
# the tail of its stderr, and the script exits 1 at the end.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
quick=""
out="gpu_benchmarks.json"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick="--quick"; shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $1 (use --quick, --out FILE)" >&2; exit 2 ;;
    esac
done
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
device="${DEVICE:-cuda}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: torch.cuda.is_available() is False with $PYTHON: no CUDA device or a CPU-only" \
         "torch build; install a CUDA torch and run on a GPU machine" >&2
    exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0

run() {  # run NAME ARGS...: one benchmark, its stdout JSON to $tmp/NAME.json
    local name="$1"; shift
    echo "gpu.sh: $name ..." >&2
    if (cd "$here" && "$PYTHON" "$@") >"$tmp/$name.json" 2>"$tmp/$name.err"; then
        echo 0 >"$tmp/$name.rc"
    else
        echo $? >"$tmp/$name.rc"
        failed=1
        echo "gpu.sh: $name failed; stderr tail:" >&2
        tail -n 5 "$tmp/$name.err" >&2
    fi
}

run scan_throughput scan_throughput.py --device "$device" $quick
run monitor_overhead monitor_overhead.py --device "$device" $quick
run zoo_scan zoo_scan.py --device "$device" --with-compiled $quick
run lab_trainer lab_trainer.py --device "$device" $( [[ -n "$quick" ]] && echo "--steps 20 --members 8" )
run activations activations.py --device "$device" $( [[ -n "$quick" ]] && echo "--repeats 5" )
for llm in llm_scan.py scan_llm.py; do  # an LLM scan benchmark, if the project has one
    if [[ -f "$here/$llm" ]]; then run "${llm%.py}" "$llm" --device "$device" $quick; fi
done

"$PYTHON" - "$tmp" "$out" "$device" <<'PY'
import json, pathlib, platform, sys

import torch

tmp, out, device = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
results = {}
for rc_file in sorted(tmp.glob("*.rc")):
    name = rc_file.stem
    rc = int(rc_file.read_text())
    text = (tmp / f"{name}.json").read_text()
    if rc == 0:
        try:
            results[name] = json.loads(text)
            continue
        except json.JSONDecodeError:
            pass
    err = (tmp / f"{name}.err").read_text().splitlines()[-20:]
    results[name] = {"failed": True, "exit_status": rc, "stderr_tail": err}
summary = {
    "benchmark": "gpu",
    "device": device,
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "machine": platform.machine(),
    "benchmarks": results,
}
pathlib.Path(out).write_text(json.dumps(summary, indent=1))
print(f"gpu.sh: wrote {out}", file=sys.stderr)
PY
exit "$failed"
