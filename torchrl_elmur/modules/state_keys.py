"""Where the recurrent modules inside a policy keep their state: one lookup for every caller."""
from __future__ import annotations

from tensordict.utils import NestedKey
from torch import nn
from torchrl.modules import GRUModule, LSTMModule

from .elmur_module import ELMURModule

RECURRENT_MODULES = (ELMURModule, GRUModule, LSTMModule)


def state_key_pairs(*modules: nn.Module) -> list[tuple[NestedKey, NestedKey]]:
    """``(state key, ("next", state key))`` of every ELMUR / GRU / LSTM module inside ``modules``,
    in module order (an LSTM's ``h`` before its ``c``); ``[]`` for memoryless modules."""
    pairs = []
    for root in modules:
        for module in root.modules():
            if isinstance(module, RECURRENT_MODULES):
                pairs += [p for p in zip(module.in_keys[1:-1], module.out_keys[1:]) if p not in pairs]
    return pairs


def recurrent_state_keys(*modules: nn.Module) -> list[NestedKey]:
    """The recurrent state keys of every ELMUR / GRU / LSTM module inside ``modules``.

    Examples:
        >>> from torchrl.modules import GRUModule
        >>> recurrent_state_keys(GRUModule(2, 3, in_keys=["x", "actor_rs", "is_init"], out_keys=["y", ("next", "actor_rs")]))
        ['actor_rs']
    """
    return [key for key, _ in state_key_pairs(*modules)]
