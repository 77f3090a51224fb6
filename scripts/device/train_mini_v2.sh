#!/usr/bin/env bash
# One chunk of vlkit-mini v2 training on a lent GPU machine.
#
# The machine reaches no registry and receives at most 64 MiB, so everything travels packed.
# Here, once per corpus version (both folders are git-ignored):
#   python scripts/pack_mini_v2.py --out .carry/mini-v2                         # ~48 MB
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl open_clip_torch==3.3.0 ftfy wcwidth
# On the device (the `run` tool with carry [".carry", ".whl"]):
#   bash scripts/device/train_mini_v2.sh [--steps N --batch B --lr LR --noun-weight W ...]   # extra train args
# Back under $OUT: the best weights and their record, run.json and the log. The optimiser state
# (37 MB) does not fit beside the data on the way there, so a later chunk continues from the best
# weights instead: copy them to runs/mini-v2-gpu/best here, add "runs/mini-v2-gpu/best" to carry,
# and pass --init runs/mini-v2-gpu/best (a new warm-up and schedule; the teacher stays v1).
# Here, afterwards:
#   mkdir -p runs/mini-v2-gpu/best && cp FILES_AT/vlkit_mini_* runs/mini-v2-gpu/best/
#   python scripts/eval_vlkit_mini.py --weights runs/mini-v2-gpu/best --quick        # validation only
set -euo pipefail
OUT=${OUT:-runs/device-out}
RUN=${RUN:-runs/mini-v2-gpu-run}
CHUNK_SECONDS=${CHUNK_SECONDS:-330}
mkdir -p "$OUT" "$RUN"
if [ -d .whl ] && ! python3 -c "import open_clip" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT/machine.txt" || true
python3 scripts/train_vlkit_mini_v2.py --packed .carry/mini-v2 --out "$RUN" --device auto --threads 8 \
    --batch 1024 --lr 1e-3 --steps 20000 --warmup 500 --eval-every 1000 --log-every 250 --noun-weight 4 --fill 0.3 \
    --chunk-seconds "$CHUNK_SECONDS" "$@" 2>&1 | tee "$OUT/train.log"
cp "$RUN/run.json" "$OUT/"
if [ -d "$RUN/best" ]; then cp "$RUN"/best/* "$OUT/"; fi
ls -la "$OUT"
