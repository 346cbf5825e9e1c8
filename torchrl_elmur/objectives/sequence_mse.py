"""Behaviour cloning for continuous actions on ``[B, T]`` sequences (mean squared error)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule


class SequenceMSELoss(LossModule):
    """MSE between a deterministic actor's ``action`` and the dataset's, over ``[*B, T]``.

    The dataset's action is read before the actor runs (the actor writes its own under the same
    key, on a copy); the actor runs in recurrent mode, as in every TorchRL loss. Returns
    ``loss_bc`` and ``mae`` (mean absolute error, detached).
    """

    @dataclass
    class _AcceptedKeys:
        action: NestedKey = "action"

    default_keys = _AcceptedKeys

    def __init__(self, actor_network: TensorDictModuleBase) -> None:
        super().__init__()
        self.actor_network = actor_network

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        target = tensordict.get(self.tensor_keys.action)
        pred = self.actor_network(tensordict.copy()).get(self.tensor_keys.action)
        if pred.shape != target.shape:
            raise ValueError(f"SequenceMSELoss: the actor's {self.tensor_keys.action!r} has shape {list(pred.shape)}, the "
                             f"data's {list(target.shape)}; expected the same.")
        loss = F.mse_loss(pred, target.to(pred.dtype))
        return TensorDict({"loss_bc": loss, "mae": (pred - target).abs().mean().detach()}, [])
