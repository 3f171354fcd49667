"""Shared self-supervision blocks: the momentum teacher, the memory queue, MultiView's forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretrain.components import build_component
from pretrain.errors import SpecError
from pretrain_builtins.layers import MemoryQueue, MomentumTeacher, apply_norm, build_norm1d, cosine_momentum
from pretrain_builtins.transforms.multiview import MultiView


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_teacher_starts_as_a_copy_and_follows_mmengine_ema():
    online = _net()
    teacher = MomentumTeacher(online, 0.1)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)  # e.g. a Pretrained init rule after construction
    teacher.ensure_synced(online)
    assert int(teacher.steps) == 1
    for a, b in zip(teacher.module.parameters(), online.parameters(), strict=True):
        assert torch.equal(a, b)
    before = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.mul_(2.0)
        online[1].running_mean.fill_(3.0)
    m = teacher.update(online, step=1, total_steps=10)
    assert m == 0.1 and int(teacher.steps) == 2
    for t, old, new in zip(teacher.module.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(t, old * 0.9 + new * 0.1)  # (1 - m) * teacher + m * online
    assert torch.equal(teacher.module[1].running_mean, online[1].running_mean)  # buffers copied
    assert set(teacher.state_dict()) >= {"module.0.weight", "module.1.running_mean", "steps"}


def test_cosine_momentum_schedule():
    assert cosine_momentum(0.01, 0.0, 0, 100) == pytest.approx(0.01)
    assert cosine_momentum(0.01, 0.0, 50, 100) == pytest.approx(0.005)
    assert cosine_momentum(0.01, 0.0, 100, 100) == pytest.approx(0.0)
    assert cosine_momentum(0.004, 1.0, 25, 100) == pytest.approx(1 - (1 - 0.004) * (math.cos(math.pi / 4) + 1) / 2)
    teacher = MomentumTeacher(_net(), 0.01, cosine=True)
    assert teacher.momentum_at(30, 60) == pytest.approx(0.005)


def test_teacher_after_loading_a_checkpoint_does_not_copy_again():
    online = _net()
    teacher = MomentumTeacher(online, 0.5)
    teacher.update(online, step=1, total_steps=2)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    fresh = MomentumTeacher(_net(), 0.5)
    fresh.load_state_dict(state)
    with torch.no_grad():
        online[0].weight.add_(1.0)
    fresh.ensure_synced(online)  # steps > 0: the loaded weights stay
    assert torch.equal(fresh.module[0].weight, state["module.0.weight"])


def test_queue_is_fifo_wraps_and_lives_in_the_state_dict():
    torch.manual_seed(0)
    queue = MemoryQueue(feat_dim=2, queue_len=5)
    torch.testing.assert_close(queue.queue.norm(dim=0), torch.ones(5))  # unit columns at start
    assert set(queue.state_dict()) == {"queue", "queue_ptr"}
    keys = torch.arange(8.0).view(4, 2)
    queue.enqueue(keys[:3])
    assert int(queue.queue_ptr) == 3
    assert torch.equal(queue.queue[:, :3], keys[:3].T)
    queue.enqueue(keys[3:] + 100)  # 1 key
    queue.enqueue(keys[:2] + 10)  # wraps: columns 4, 0
    assert int(queue.queue_ptr) == 1
    assert torch.equal(queue.queue[:, 4], keys[0] + 10) and torch.equal(queue.queue[:, 0], keys[1] + 10)
    assert not queue.negatives().requires_grad
    assert list(MemoryQueue.batch_issues(65536, 256)) == []
    assert "not a multiple" in next(iter(MemoryQueue.batch_issues(100, 64)))
    assert "holds only" in next(iter(MemoryQueue.batch_issues(16, 64)))


def test_syncbn_without_process_group_is_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    sync, plain = build_norm1d("SyncBN", 4), build_norm1d("BN1d", 4)
    torch.testing.assert_close(apply_norm(sync, x), apply_norm(plain, x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


def test_multiview_single_pipeline_and_mmpretrain_list_form():
    crop = {"type": "RandomCrop", "size": 6}
    one = build_component("transform", {"type": "MultiView", "num_views": 3, "pipeline": [crop]})
    images = torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8)
    views = one(images, generator=torch.Generator().manual_seed(0))
    assert len(views) == 3 and all(v.shape == (2, 1, 6, 6) for v in views)
    # BYOL-style asymmetric views, different sizes: 1 view of 6 px, 2 views of 4 px.
    two = build_component("transform", {
        "type": "MultiView", "num_views": [1, 2],
        "transforms": [[crop], [{"type": "RandomCrop", "size": 4}, {"type": "RandomFlip", "prob": 0.5}]],
    })
    views = two(images, generator=torch.Generator().manual_seed(0))
    assert [tuple(v.shape[-2:]) for v in views] == [(6, 6), (4, 4), (4, 4)]
    assert not torch.equal(views[1], views[2])  # independent draws
    assert two.total_views == 3
    assert MultiView.views_from_params({"num_views": [1, 2], "transforms": [[], []]}) == 3
    assert MultiView.views_from_params({"num_views": 2, "transforms": [[], []]}) == 4
    assert MultiView.views_from_params({"num_views": 2}) == 2


def test_multiview_list_form_errors_name_their_place():
    with pytest.raises(SpecError) as info:
        build_component("transform", {"type": "MultiView", "num_views": [1, 1, 2],
                                      "transforms": [[{"type": "RandomCrop", "size": 0}], []]})
    text = str(info.value)
    assert "num_views" in text and "transforms[0][0].size" in text
    with pytest.raises(ValueError, match="either pipeline"):
        MultiView(num_views=2)
