"""Behaviour cloning for continuous actions on ``[B, T]`` sequences (mean squared error)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
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

    Args:
        actor_network: writes ``action [*B, T, A]``.
        step_weights: optional ``[T]`` weights of each time step of the rows (rows aligned with
            episode starts, e.g. whole episodes): ``loss_bc = sum_t w_t mse_t / sum_t w_t``. For
            tasks whose choice is made in a few steps that the rest of the episode does not need
            to be fitted (behaviour cloning's "copycat" shortcut: later actions can be read from the
            arm's own motion). None: every step weighs the same.

    Examples:
        >>> from tensordict.nn import TensorDictModule
        >>> actor = TensorDictModule(torch.nn.Linear(2, 1), ["observation"], ["action"])
        >>> td = TensorDict({"observation": torch.zeros(1, 3, 2), "action": torch.tensor([[[1.0], [0.0], [0.0]]])}, [1, 3])
        >>> _ = torch.nn.init.zeros_(actor.module.weight), torch.nn.init.zeros_(actor.module.bias)
        >>> SequenceMSELoss(actor)(td)["loss_bc"].item()  # errors 1, 0, 0
        0.3333333432674408
        >>> SequenceMSELoss(actor, step_weights=torch.tensor([2.0, 1.0, 1.0]))(td)["loss_bc"].item()
        0.5
    """

    @dataclass
    class _AcceptedKeys:
        action: NestedKey = "action"

    default_keys = _AcceptedKeys

    def __init__(self, actor_network: TensorDictModuleBase, step_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.actor_network = actor_network
        if step_weights is not None:
            step_weights = torch.as_tensor(step_weights, dtype=torch.float32)
            if step_weights.ndim != 1 or not bool((step_weights >= 0).all()) or not float(step_weights.sum()) > 0:
                raise ValueError(f"SequenceMSELoss: step_weights must be a 1-D tensor [T] of weights >= 0 with a "
                                 f"positive sum, received {step_weights.tolist()}.")
        self.register_buffer("step_weights", step_weights)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        target = tensordict.get(self.tensor_keys.action)
        pred = self.actor_network(tensordict.copy()).get(self.tensor_keys.action)
        if pred.shape != target.shape:
            raise ValueError(f"SequenceMSELoss: the actor's {self.tensor_keys.action!r} has shape {list(pred.shape)}, the "
                             f"data's {list(target.shape)}; expected the same.")
        if self.step_weights is None:
            loss = F.mse_loss(pred, target.to(pred.dtype))
        else:
            w = self.step_weights
            if pred.ndim < 2 or pred.shape[-2] != w.shape[0]:
                raise ValueError(f"SequenceMSELoss: step_weights has {w.shape[0]} steps, the batch's "
                                 f"{self.tensor_keys.action!r} {list(pred.shape)} (expected [*B, {w.shape[0]}, A]).")
            per_step = (pred - target.to(pred.dtype)).pow(2).mean(-1)  # [*B, T]
            loss = (per_step * w.to(per_step.dtype)).sum(-1).mean() / w.sum()
        return TensorDict({"loss_bc": loss, "mae": (pred - target).abs().mean().detach()}, [])
