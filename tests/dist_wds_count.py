"""Run under torchrun: train a WebDataset spec while recording which samples every rank and worker decodes.

Used by ``tests/test_webdataset.py``::

    torchrun --standalone --nproc_per_node=2 tests/dist_wds_count.py SPEC RUN_DIR OUT_DIR

Each decode appends ``rank epoch key`` to ``OUT_DIR/keys-<pid>.txt`` (DataLoader workers
are forked after the patch, so they inherit it and write their own files).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    spec_path, run_dir, out_dir = argv
    from pretrain.engine.distributed import shutdown
    from pretrain.engine.trainer import Trainer
    from pretrain.spec.files import load_spec
    from pretrain.spec.validate import validate_spec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(validate_spec(load_spec(spec_path), source=spec_path), run_dir, live=False)
    try:
        trainer.setup()
        loader = trainer.loaders.train
        source = loader._source  # the StreamSource
        workers = loader._workers
        decode = source.dataset.decode
        rank = trainer.dist.rank

        def recording(sample):  # type: ignore[no-untyped-def]
            with open(out / f"keys-{os.getpid()}.txt", "a", encoding="utf-8") as fh:
                fh.write(f"{rank} {workers.epoch} {sample['__key__']}\n")
            return decode(sample)

        source.dataset.decode = recording
        trainer.fit()
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
