"""The conformance kit catches real mistakes, says what to change, and passes correct twins."""

from __future__ import annotations

import sys

import pytest

import _conformance_fakes as fakes
from pretrain.testing import (
    ComponentCheckError,
    check_component,
    component_checks,
    parametrize_with_checks,
)
from pretrain.testing._checks import CHECKS


def failing(cls: type, check: str, **kwargs) -> ComponentCheckError:
    """Run one check on ``cls`` and return its error (the test fails if it passes)."""
    case = next(c for c in component_checks(cls, **kwargs) if c.name == check)
    with pytest.raises(ComponentCheckError) as err:
        case()
    assert err.value.check == check
    assert err.value.fix, "every failure must say what to change"
    return err.value


@pytest.mark.parametrize(
    "cls", [fakes.GoodNet, fakes.GoodPool, fakes.GoodL1, fakes.GoodHead, fakes.NeedsDepthWithExample],
    ids=lambda c: c.__name__,
)
def test_correct_components_pass_every_check(cls, registry):
    passed = check_component(cls)
    assert "check_gradients" in passed and "check_forward_contract" in passed


def test_neck_returning_bare_tensor(registry):
    err = failing(fakes.BareTensorPool, "check_forward_contract")
    assert "bare tensor (2, 16)" in err.problem and "return (x,)" in err.fix


def test_neck_that_assumes_a_tensor_input(registry):
    err = failing(fakes.TutorialPool, "check_forward_contract")
    assert "forward(tuple[Tensor(2, 16, 4, 4)])" in err.problem and "raised AttributeError" in err.problem


def test_backbone_returning_a_list(registry):
    err = failing(fakes.ListNet, "check_forward_contract")
    assert "returned list[" in err.problem and "tuple(outs)" in err.fix


def test_loss_ignoring_weight(registry):
    err = failing(fakes.IgnoresWeightL1, "check_loss_weight")
    assert "weight [0, 1, 2, 0.5]" in err.problem and "weight" in err.fix
    # the other loss checks still pass: the kit pinpoints the mistake
    for name in ("check_loss_reduction", "check_loss_avg_factor", "check_loss_weight_scaling"):
        next(c for c in component_checks(fakes.IgnoresWeightL1) if c.name == name)()


def test_loss_ignoring_reduction_override(registry):
    err = failing(fakes.IgnoresReductionL1, "check_loss_weight")
    assert "must keep the batch dimension" in err.problem and "reduction_override" in err.fix
    failing(fakes.IgnoresReductionL1, "check_loss_reduction")


def test_loss_weight_not_linear(registry):
    err = failing(fakes.SquaredWeightL1, "check_loss_weight_scaling", config={"loss_weight": 1.5})
    assert "loss_weight=3.0" in err.problem


def test_loss_with_old_signature(registry):
    err = failing(fakes.OldSignatureLoss, "check_forward_contract")
    assert "no weight, avg_factor, reduction_override" in err.problem and "weighted_loss" in err.fix


def test_backbone_with_batch_cross_talk(registry):
    err = failing(fakes.CrossTalkNet, "check_batch_independence")
    assert "when the other samples are in the batch" in err.problem and "batch statistics" in err.fix
    # everything else about it is fine
    check_component(fakes.CrossTalkNet, expected_failed_checks={"check_batch_independence": "mixes samples"})


def test_parameter_without_gradient(registry):
    err = failing(fakes.UnusedParamNet, "check_gradients")
    assert "2 of 8 trainable parameters get no gradient: proj.weight, proj.bias" in err.problem
    assert "buffers" in err.fix


def test_neck_detaching_its_input(registry):
    err = failing(fakes.DetachingNeck, "check_gradients")
    assert "no gradient reaches the inputs" in err.problem


def test_random_in_eval_mode(registry):
    err = failing(fakes.NoisyEvalNet, "check_deterministic_eval")
    assert "self.training" in err.fix


def test_state_outside_state_dict(registry):
    err = failing(fakes.UnsavedStateNet, "check_state_dict_roundtrip")
    assert "persistent buffer" in err.fix


def test_head_returning_a_tensor_from_loss(registry):
    err = failing(fakes.TensorLossHead, "check_forward_contract")
    assert "not a dict" in err.problem or "the head contract is a dict" in err.problem


def test_head_indexing_a_sample_instead_of_a_level(registry):
    err = failing(fakes.SampleIndexingHead, "check_forward_contract")
    assert "expected scores of shape (N, C)" in err.problem and "not a sample" in err.fix


def test_undocumented_field(registry):
    err = failing(fakes.UndocumentedNet, "check_documentation")
    assert "channels" in err.problem and "Args:" in err.fix


def test_required_field_without_example_config(registry):
    err = failing(fakes.NeedsDepth, "check_example_config")
    assert "depth" in err.problem and "example_config" in err.fix
    # every other check reports the same root cause under its own name
    err = failing(fakes.NeedsDepth, "check_gradients")
    assert "(in check_example_config)" in err.problem
    # an explicit config fixes it
    assert "check_gradients" in check_component(fakes.NeedsDepth, config={"depth": 3})


def test_schema_that_cannot_be_derived(registry):
    from torch import nn

    class TakesModule(nn.Module):
        """Takes a module as a plain argument.

        Args:
            act: An activation module.
        """

        component_kind = "neck"

        def __init__(self, *, act: nn.Module = nn.ReLU()) -> None:  # noqa: B008
            super().__init__()

    err = failing(TakesModule, "check_schema")
    assert "schema" in err.problem and "spec-friendly" in err.fix + err.problem


def test_module_registering_itself_at_import(site, registry):
    (site / "fakeplug_selfreg.py").write_text(
        "import pretrain\nfrom pretrain.components import BaseNeck\n\n"
        "class SelfReg(BaseNeck):\n    '''Registers itself.'''\n\n"
        "    def forward(self, inputs):\n        return inputs\n\n"
        "pretrain.get_registry().register('neck', 'SelfReg', SelfReg)\n",
        encoding="utf-8",
    )
    import fakeplug_selfreg

    err = failing(fakeplug_selfreg.SelfReg, "check_import_side_effects")
    assert "registered components at import: neck SelfReg" in err.problem and "entry points" in err.fix


def test_reimport_is_clean_for_a_plain_module(site, registry):
    (site / "fakeplug_clean.py").write_text(
        "from pretrain.components import BaseNeck\n\n"
        "class Clean(BaseNeck):\n    '''Identity.'''\n\n"
        "    def forward(self, inputs):\n        return inputs\n",
        encoding="utf-8",
    )
    import fakeplug_clean

    next(c for c in component_checks(fakeplug_clean.Clean) if c.name == "check_import_side_effects")()
    assert sys.modules["fakeplug_clean"] is fakeplug_clean  # the original module is restored


def test_check_component_reports_every_failure(registry):
    with pytest.raises(ComponentCheckError) as err:
        check_component(fakes.UnusedParamNet)
    assert [f.check for f in err.value.failures] == ["check_gradients"]
    assert "To fix:" in str(err.value)


def test_expected_failures_must_stay_honest(registry):
    with pytest.raises(ComponentCheckError, match="Remove it from expected_failed_checks"):
        check_component(fakes.GoodNet, expected_failed_checks={"check_gradients": "not really"})
    with pytest.raises(ComponentCheckError, match="do not apply"):
        list(component_checks(fakes.GoodNet, expected_failed_checks={"check_loss_weight": "n/a"}))


def test_checks_per_kind(registry):
    loss_checks = [c.name for c in component_checks(fakes.GoodL1)]
    assert loss_checks[-4:] == ["check_loss_weight", "check_loss_reduction", "check_loss_avg_factor",
                                "check_loss_weight_scaling"]
    assert set(loss_checks) <= set(CHECKS)
    neck_checks = [c.id for c in component_checks(fakes.GoodPool)]
    assert "neck:GoodPool-check_batch_independence" in neck_checks
    assert not any("loss_weight" in c for c in neck_checks)


def test_resolve_by_registered_name_and_unknown(registry):
    [case] = [c for c in component_checks("ResNet_CIFAR") if c.name == "check_schema"]
    assert case.id == "backbone:ResNet_CIFAR-check_schema"
    with pytest.raises(ComponentCheckError, match="registered as no kind"):
        list(component_checks("NoSuchThing"))


@parametrize_with_checks(
    [fakes.GoodPool, fakes.CrossTalkNet],
    expected_failed_checks={"backbone:CrossTalkNet": {"check_batch_independence": "subtracts the batch mean"}},
)
def test_parametrize_with_checks(check):
    check()
