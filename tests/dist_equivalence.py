"""Run under torchrun (or plainly): train a spec, dump this rank's weights and metrics.

Used by ``tests/test_ddp.py``::

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 tests/dist_equivalence.py \
        SPEC RUN_DIR OUT_DIR

Every rank writes ``OUT_DIR/rank<r>.safetensors`` (its final model weights) and
``OUT_DIR/rank<r>.json`` (the last metrics record, a fresh evaluation, its shard sizes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    spec_path, run_dir, out_dir = argv
    from pretrain.engine import checkpoint as ckpt
    from pretrain.engine.distributed import shutdown
    from pretrain.engine.trainer import Trainer
    from pretrain.spec.files import load_spec
    from pretrain.spec.validate import validate_spec

    spec = validate_spec(load_spec(spec_path), source=spec_path)
    trainer = Trainer(spec, run_dir, live=False)
    try:
        record = trainer.fit()
        metrics = trainer.evaluate()  # a collective: every rank takes part
        rank = trainer.dist.rank
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ckpt.save_tensors(out / f"rank{rank}.safetensors", trainer.model.state_dict(), {})
        assert trainer.loaders.train is not None and trainer.loaders.val is not None
        summary = {
            "world_size": trainer.dist.world_size,
            "record": record,
            "eval": {k: v for k, v in metrics.items() if k != "per_class"},
            "train_samples": trainer.loaders.train.num_samples,
            "val_samples": trainer.loaders.val.num_samples,
        }
        (out / f"rank{rank}.json").write_text(json.dumps(summary), encoding="utf-8")
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
