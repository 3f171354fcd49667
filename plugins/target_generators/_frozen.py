"""Frozen, pretrained tokenizers (VQKD, DALL-E): always in eval mode, no gradients, loaded weights.

A BEiT run whose tokenizer has random weights trains the encoder to predict the codes of
a random network, which learns nearly nothing, and nothing in the loss curve says so.
So a tokenizer refuses to produce targets from weights that were never loaded, unless
its spec says ``allow_random_init = true`` (smoke tests, the digits recipe).

Where the decision is made, without a core hook: construction cannot know whether a
``Pretrained`` rule will run (the core builds every component, then applies init rules
top-down, ``Pretrained`` rules last). A ``load_state_dict`` pre-hook notices every load
that fills the tokenizer's whole state: its own ``Pretrained`` rule, one on the model,
resuming a run, ``pretrain eval --weights``. The check runs when training starts (the
trainer calls ``model.train()`` after building, loading and resuming, which reaches this
module's ``train``) and again on every forward, so a hand-built model is covered too.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pretrain.components import BaseTargetGenerator
from pretrain.errors import PretrainError

__all__ = ["FrozenTokenizer"]


class FrozenTokenizer(BaseTargetGenerator):
    """Base of the frozen tokenizers: eval mode, ``requires_grad`` off, pretrained weights required.

    Subclasses call :meth:`freeze` at the end of ``__init__`` and :meth:`check_weights`
    in ``forward``. The engine builds the optimizer over parameters that require grad,
    so a frozen tokenizer is left out of it.
    """

    #: Name used in messages (the spec's ``type``).
    type_name: str = "tokenizer"
    #: ``pretrain convert-weights --arch`` value of the published checkpoint.
    convert_arch: str = ""

    def __init__(self, *, allow_random_init: bool = False) -> None:
        super().__init__()
        self.allow_random_init = allow_random_init
        self._weights_loaded = False
        self.register_load_state_dict_pre_hook(self._note_load)

    def freeze(self) -> None:
        """No gradients, eval mode (dropout and drop-path off) for good."""
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTokenizer:
        """Stay in eval mode; training a model with this tokenizer first checks its weights."""
        super().train(False)
        if mode:
            self.check_weights()
        return self

    def _note_load(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Pre-hook: a load that holds every tensor of this tokenizer (same shapes) fills its weights."""
        own = self.state_dict()
        if all(prefix + k in state_dict and tuple(state_dict[prefix + k].shape) == tuple(v.shape)
               for k, v in own.items()):
            self._weights_loaded = True

    @property
    def weights_loaded(self) -> bool:
        """Whether a checkpoint filled this tokenizer's weights."""
        return self._weights_loaded

    def check_weights(self) -> None:
        """Refuse random weights unless ``allow_random_init`` (meta tensors pass: nothing runs).

        Raises:
            PretrainError: The weights were never loaded.

        """
        if self._weights_loaded or self.allow_random_init:
            return
        if any(p.is_meta for p in self.parameters()):
            return
        arch = self.convert_arch or self.type_name.lower()
        raise PretrainError(
            f"the {self.type_name} target generator (model.target_generator) has random weights: no checkpoint "
            f"was loaded into it. BEiT-style pretraining with a random tokenizer teaches the encoder to predict "
            f"the codes of a random network, which is almost always a mistake, and the loss curve does not show it",
            hint=(
                f"Convert the published tokenizer once (`pretrain convert-weights {arch}_encoder.pth "
                f"{arch}.safetensors --from mmpretrain --arch {arch}`) and load it with "
                f'init = [{{type = "Pretrained", checkpoint = "{arch}.safetensors"}}] in [model.target_generator]. '
                "For a smoke test on purpose, set allow_random_init = true there."
            ),
        )
