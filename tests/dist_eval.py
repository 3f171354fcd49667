"""Run under torchrun (or plainly): evaluate weights with each spec, dump this rank's metrics.

Used by ``tests/test_ddp.py``::

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 tests/dist_eval.py OUT_DIR WEIGHTS SPEC...

Every rank writes ``OUT_DIR/rank<r>.json``: a list with one metrics object per spec.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    out_dir, weights, *specs = argv
    from pretrain.engine.api import prepare_spec
    from pretrain.engine.distributed import shutdown
    from pretrain.engine.evaluate import evaluate_weights

    try:  # one process group for every spec (pretrain.evaluate would tear it down after each)
        results = [evaluate_weights(prepare_spec(spec, training=False), weights, "cpu") for spec in specs]
    finally:
        shutdown()
    rank = int(os.environ.get("RANK", "0"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
