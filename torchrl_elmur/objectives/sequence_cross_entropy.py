"""Behaviour cloning for discrete actions on ``[B, T]`` sequences (cross-entropy, label smoothing).

Why not TorchRL's ``BCLoss`` here: for integer actions it expects the actor to overwrite the
expert action key with its logits, and it calls ``F.cross_entropy(pred, target)`` on the batch as
given, which treats dim 1 as the class dim, so ``[B, T, A]`` logits of a recurrent policy are read
as ``T`` classes; it also has no label smoothing (the published T-Maze recipe uses 0.16). This
loss reads the logits from their own key, keeps the data's action, and flattens ``[*B, T]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from ..core import ELMURBackbone


class SequenceCrossEntropyLoss(LossModule):
    """Cross-entropy between an actor's logits and the dataset's discrete actions.

    Runs the actor in recurrent mode (as every TorchRL loss does), so a memory module inside it
    sees ``[B, T]`` sequences.

    Args:
        actor_network: writes ``logits`` ``[*B, T, A]`` from the data (e.g. encoder -> memory -> head).

    Keyword Args:
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.

    Keys (``loss.set_keys(...)``): ``logits`` (default ``"logits"``), ``action`` (the data's
    actions, int ``[*B, T]`` or ``[*B, T, 1]``, or one-hot ``[*B, T, A]``; default ``"action"``).

    Returns a TensorDict with ``loss_bc`` (scalar) and ``accuracy`` (detached); when the actor
    holds ELMUR backbones with a mixture-of-experts FFN (``ELMURConfig.moe``), also ``loss_moe``,
    their load-balancing loss (:meth:`ELMURBackbone.moe_loss`). Minimise the sum of the ``loss_*``
    entries.
    """

    @dataclass
    class _AcceptedKeys:
        logits: NestedKey = "logits"
        action: NestedKey = "action"

    default_keys = _AcceptedKeys

    def __init__(self, actor_network: TensorDictModuleBase, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"SequenceCrossEntropyLoss: label_smoothing={label_smoothing} is invalid: expected [0, 1).")
        self.actor_network = actor_network
        self.label_smoothing = label_smoothing
        self._moe_backbones = [m for m in actor_network.modules() if isinstance(m, ELMURBackbone) and m.config.moe]

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(self.tensor_keys.action)  # read before the actor writes its own action
        out = self.actor_network(tensordict.copy())
        logits = out.get(self.tensor_keys.logits)
        num_actions = logits.shape[-1]
        if action.shape == logits.shape:  # one-hot
            action = action.argmax(-1)
        elif action.shape == logits.shape[:-1] + (1,):
            action = action.squeeze(-1)
        if action.shape != logits.shape[:-1]:
            raise ValueError(
                f"SequenceCrossEntropyLoss: action {self.tensor_keys.action!r} of shape {list(action.shape)} does not match "
                f"logits of shape {list(logits.shape)} (expected {list(logits.shape[:-1])}, [..., 1] or one-hot)."
            )
        target = action.reshape(-1).long()
        flat = logits.reshape(-1, num_actions)
        loss = F.cross_entropy(flat, target, label_smoothing=self.label_smoothing)
        accuracy = (flat.argmax(-1) == target).float().mean()
        out = TensorDict({"loss_bc": loss, "accuracy": accuracy.detach()}, [])
        if self._moe_backbones:
            out["loss_moe"] = sum(b.moe_loss() for b in self._moe_backbones)
        return out
