#!/usr/bin/env bash
# Paper-scale check on a lent GPU machine (device tool): installs the project, runs
# configs/paper_device.yaml under a time limit and copies the reports to $OUT. Runs keep resumable
# states every 1000 steps, so a second call continues where the first stopped.
#   usage (from the repo root): bash benchmarks/device_paper.sh [seconds, default 780]
set -euo pipefail
limit=${1:-780}
out=${OUT:-/tmp/paper_device_out}
python3 -m venv .venv-device
. .venv-device/bin/activate
pip install --quiet -e . 2>&1 | tail -2
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout "$limit" accelerate launch --num_processes 1 --mixed_precision bf16 probes/run.py \
    --config configs/paper_device.yaml --output_dir reports/paper_device || echo "stopped at the limit"
# reports of whatever runs finished, without training the rest
python probes/run.py --config configs/paper_device.yaml --output_dir reports/paper_device --report_only true
mkdir -p "$out" && cp -r reports/paper_device/*.csv reports/paper_device/figures "$out"/ 2>/dev/null || true
