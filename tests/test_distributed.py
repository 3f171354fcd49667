"""pretrain.distributed: single-process identity, and DDP-correct gradients on 2 gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain import distributed as pdist

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_without_a_process_group_everything_is_the_identity():
    assert not pdist.is_distributed()
    assert (pdist.rank(), pdist.world_size()) == (0, 1)
    x = torch.randn(3, 2, requires_grad=True)
    assert pdist.all_gather(x) is x and pdist.all_reduce(x) is x
    assert pdist.all_gather_sizes(3) == [3] and pdist.rank_offset(3) == 0
    assert torch.equal(pdist.broadcast(x.detach().clone()), x.detach())


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_processes_give_single_process_losses_and_gradients(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "dist_collectives.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for r in (0, 1):
        report = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert set(report) == {"info_nce", "full_loss_every_rank", "cross_correlation"}
        for name, row in report.items():
            assert row["loss_diff"] < 1e-6, (name, row)
            assert row["grad_diff"] < 1e-6, (name, row)
            assert row["grad_scale"] == pytest.approx(1.0, abs=1e-6), (name, row)
