"""Feed-forward nets of an ELMUR layer: the plain MLP and the released mixture of experts.

Glossary: N tokens (any leading dims), D width, E experts, F an expert's hidden width.

Both map ``[..., D] -> [..., D]`` and leave the outer dropout to the caller's residual
(:class:`~torchrl_elmur.core.layer.Residual`). :func:`make_feedforward` picks one from the config.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import dropout
from .config import ELMURConfig, MoEConfig


class FeedForward(nn.Sequential):
    """Linear(D, d_ff) -> GELU -> dropout -> Linear(d_ff, D) (the outer dropout is the residual's)."""

    def __init__(self, config: ELMURConfig) -> None:
        super().__init__(
            nn.Linear(config.d_model, config.ff_dim), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.ff_dim, config.d_model),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[..., D] -> [..., D]`` (the dropout is skipped where it is the identity: eval mode or
        ``p = 0``; a call of it costs a CPU step several microseconds even then)."""
        up, gelu, drop, down = self
        return down(dropout(gelu(up(x)), drop.p, self.training))


class SwiGLUExperts(nn.Module):
    """``E`` bias-free SwiGLU experts, evaluated together and summed with per-expert weights.

    Expert ``e``: ``W_down[:, e] (dropout(silu(W_gate[e] x) * W_up[e] x))``, with ``W_gate[e]``,
    ``W_up[e]`` ``[F, D]`` and ``W_down[:, e]`` ``[D, F]``: exactly ``E`` separate ``nn.Linear(bias=False)``
    triples, stored so that all experts run in three plain matmuls of hidden width E * F without a
    copy (``w_down`` is ``[D, E, F]``, i.e. ``[D, E * F]``).
    """

    def __init__(self, d_model: int, hidden: int, num_experts: int, dropout: float) -> None:
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.w_up = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.w_down = nn.Parameter(torch.empty(d_model, num_experts, hidden))
        self.dropout = dropout
        self.reset_parameters("torch")

    def reset_parameters(self, scheme: str) -> None:
        """``"torch"``: nn.Linear's default per expert (U(+-1/sqrt(fan_in))); ``"released"``: xavier-uniform per expert."""
        n = self.w_gate.shape[0]
        experts = [*self.w_gate.data, *self.w_up.data, *(self.w_down.data[:, e] for e in range(n))]  # [out, in] each
        for w in experts:
            if scheme == "released":
                nn.init.xavier_uniform_(w)
            else:
                bound = 1.0 / math.sqrt(w.shape[-1])
                nn.init.uniform_(w, -bound, bound)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """``sum_e weights[:, e] * expert_e(x)`` for ``x [N, D]``, ``weights [N, E]`` (None: all 1) -> ``[N, D]``."""
        e, f, d = self.w_gate.shape
        hidden = F.silu(F.linear(x, self.w_gate.reshape(e * f, d))) * F.linear(x, self.w_up.reshape(e * f, d))  # [N, E*F]
        hidden = dropout(hidden, self.dropout, self.training)
        if weights is not None:  # scale each expert's hidden units: the down projection is linear
            hidden = (hidden.view(-1, e, f) * weights.unsqueeze(-1)).view(-1, e * f)
        return F.linear(hidden, self.w_down.view(d, e * f))  # [N, D]


def load_balancing_loss(gates: Tensor, indices: Tensor, num_experts: int) -> Tensor:
    """The released load-balancing loss (before its coefficient): ``E * sum_e f_e * G_e``.

    ``f_e`` = share of the ``N * k`` routed slots that go to expert e (no gradient), ``G_e`` =
    summed gate of expert e divided by ``N * k``.

    Args:
        gates: ``[N, k]`` renormalised top-k gates; indices: int64 ``[N, k]`` their experts.

    Examples:
        >>> g = torch.tensor([[1.0], [1.0], [1.0], [1.0]])     # top-1: every gate is 1
        >>> load_balancing_loss(g, torch.tensor([[0], [0], [0], [1]]), 2).item()  # 2 * (0.75^2 + 0.25^2)
        1.25
    """
    total = gates.numel()
    chosen = F.one_hot(indices, num_experts).to(gates.dtype)  # [N, k, E]
    fractions = chosen.sum((0, 1)) / total  # [E]
    gate_share = (gates.unsqueeze(-1) * chosen).sum((0, 1)) / total  # [E]
    return num_experts * (fractions * gate_share).sum()


class MoEFeedForward(nn.Module):
    """Routed + shared SwiGLU experts (the released ``MixtureOfExperts``), see :class:`MoEConfig`.

    ``y = sum_e g_e(x) expert_e(x) + sum_s shared_s(x)``. Routed experts are evaluated densely and
    weighted by the (mostly zero) gates: the same values and gradients as running each expert on
    its own tokens, with no data-dependent shapes. In training mode with ``balance_coef > 0`` each
    call appends its load-balancing loss to :attr:`aux_losses` (cleared by the backbone at the
    start of every forward).
    """

    def __init__(self, config: ELMURConfig) -> None:
        super().__init__()
        moe: MoEConfig = config.moe
        self.moe = moe
        expert_ff, shared_ff = moe.widths(config.d_model)
        self.router = nn.Linear(config.d_model, moe.num_experts, bias=False)
        self.experts = SwiGLUExperts(config.d_model, expert_ff, moe.num_experts, config.dropout)
        self.shared = SwiGLUExperts(config.d_model, shared_ff, moe.num_shared, config.dropout) if moe.num_shared else None
        self.aux_losses: list[Tensor] = []

    def reset_parameters(self, scheme: str) -> None:
        if scheme == "released":
            nn.init.xavier_uniform_(self.router.weight)
        else:
            self.router.reset_parameters()
        self.experts.reset_parameters(scheme)
        if self.shared is not None:
            self.shared.reset_parameters(scheme)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, D]
        probs = torch.softmax(self.router(flat), -1)  # [N, E]
        gates, indices = torch.topk(probs, self.moe.top_k, dim=-1)  # [N, k]
        # renormalised over the top k; for k = 1 that is exactly 1 (p / p), written as such so that
        # the router gets an exact zero gradient rather than rounding noise
        gates = torch.ones_like(gates) if self.moe.top_k == 1 else gates / gates.sum(-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(-1, indices, gates)  # [N, E], zero for experts not chosen
        y = self.experts(flat, weights)
        if self.shared is not None:
            y = y + self.shared(flat)
        if self.training and self.moe.balance_coef > 0:
            self.aux_losses.append(self.moe.balance_coef * load_balancing_loss(gates, indices, self.moe.num_experts))
        return y.reshape(shape)


def make_feedforward(config: ELMURConfig) -> nn.Module:
    """The token / memory feed-forward net: :class:`FeedForward` or, with ``config.moe``, :class:`MoEFeedForward`."""
    return FeedForward(config) if config.moe is None else MoEFeedForward(config)
