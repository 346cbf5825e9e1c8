"""The T-Maze oracle as a TorchRL policy: it remembers the hint in a recurrent state key."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Unbounded
from torchrl.envs.transforms import TensorDictPrimer

from . import tmaze_rules as rules


class TMazeOracle(TensorDictModuleBase):
    """Right to the junction, then to the hinted side.

    Keys: reads ``observation``, ``oracle_hint`` (``[*B, 1]``, the hint seen at reset) and ``is_init``;
    writes ``action`` (``[*B]`` int64) and ``("next", "oracle_hint")``. Register its state with
    :meth:`make_tensordict_primer`, like any TorchRL recurrent module.
    """

    def __init__(self) -> None:
        super().__init__()
        self.in_keys = ["observation", "oracle_hint", "is_init"]
        self.out_keys = ["action", ("next", "oracle_hint")]

    def make_tensordict_primer(self) -> TensorDictPrimer:
        return TensorDictPrimer({"oracle_hint": Unbounded(shape=(1,), dtype=torch.float32)}, expand_specs=True)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        is_init = tensordict.get("is_init")
        hint = tensordict.get("oracle_hint", torch.zeros_like(obs[..., 1:2]))
        hint = torch.where(is_init, obs[..., 1:2], hint)
        tensordict.set("action", rules.oracle_action(obs, hint.squeeze(-1)))
        tensordict.set(("next", "oracle_hint"), hint)
        return tensordict
