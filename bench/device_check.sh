#!/bin/bash
# CUDA checks, run on a lent GPU machine through the `device` tool (one prepared script).
#
# The GPU machine has torch but no network: put the pure-Python wheels it lacks in
# .whl/ first (ignored by git, sent with `carry`), e.g.
#   pip download --only-binary=:all: --python-version 3.12 --no-deps -d .whl \
#       pydantic pydantic-core annotated-types typing-inspection tomli-w
# then run `bash bench/device_check.sh` there. Prints figures; writes logs to $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . > "$OUT/install.log" 2>&1 \
    || { tail -20 "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/site
SRC=$PWD
cd /tmp && cp -r "$SRC/examples" /tmp/examples && cp -r "$SRC/bench" /tmp/bench
python3 -c "import torch, pretrain; print('torch', torch.__version__, torch.cuda.get_device_name())"

echo "=== quickstart on CUDA (train, then eval parity)"
/usr/bin/time -f "wall %e s" python3 -m pretrain.cli train examples/specs/quickstart.toml --run-dir /tmp/q --plain 2>&1 \
    | grep -E "^epoch (1|10|20)/20 \||done|wall|rror"
python3 -m pretrain.cli eval examples/specs/quickstart.toml --weights /tmp/q --json \
    | python3 -c "import json,sys; d=json.load(sys.stdin); print('eval', {k: v for k, v in d.items() if k.startswith('accuracy')})"

echo "=== MAE pretraining on CUDA, bf16 (2 epochs)"
/usr/bin/time -f "wall %e s" python3 -m pretrain.cli train examples/specs/mae_vit-tiny_digits.toml --run-dir /tmp/mae --plain \
    --set train.epochs=2 --set train.precision='"bf16"' 2>&1 | grep -E "^epoch|done|wall|rror"

echo "=== engine overhead (CUDA: fp32 and bf16 + channels_last; ResNet-50 224 px batch 256)"
timeout 240 python3 bench/overhead.py --steps 15 --rounds 5 2>&1 | grep -v Warning
