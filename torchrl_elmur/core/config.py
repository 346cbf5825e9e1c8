"""Configuration of the ELMUR backbone: one validated dataclass and the published presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("post", "pre")
WRITE_RULES = ("paper", "official", "replace_all")
INITS = ("torch", "released")
DROPOUT_PLACEMENTS = ("residual", "released")


def _fail(field: str, value, allowed: str, owner: str = "ELMURConfig") -> None:
    raise ValueError(f"{owner}.{field}={value!r} is invalid: expected {allowed}.")


def _check_int(owner: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(name, value, f"an int >= {low}", owner)


@dataclass(frozen=True)
class MoEConfig:
    """A mixture-of-experts feed-forward net, as in the released code (DeepSeek-style).

    ``y = sum_{e in top-k(router(x))} g_e(x) * expert_e(x) + sum_s shared_s(x)``, where every
    expert is a bias-free SwiGLU ``W_down(silu(W_gate x) * W_up x)`` with dropout on its hidden
    units, the router is a bias-free ``Linear(D, num_experts)`` followed by a softmax, and the
    gates ``g`` are the top-k probabilities renormalised to sum to 1.

    Args:
        num_experts: routed experts E.
        top_k: routed experts active per token. (The released code counts the shared experts
            in its ``top_k``: its T-Maze ``top_k=3`` with 2 shared experts is ``top_k=1`` here.)
            With ``top_k=1`` the single gate is always 1: the router receives no gradient and
            only picks, as initialised, which expert a token goes to (every published config).
        num_shared: always-active shared experts.
        expert_ff: hidden width of each routed expert (None: D / 4).
        shared_ff: hidden width of each shared expert (None: 4 D).
        balance_coef: coefficient of the released load-balancing loss
            ``coef * E * sum_e f_e * G_e`` (``f_e`` the fraction of routed slots that go to
            expert e, ``G_e`` its summed gate per routed slot), read with
            :meth:`ELMURBackbone.moe_loss` after a training forward. Constant (no gradient)
            when ``top_k=1``.

    The defaults are the published T-Maze values, with the widths relative to D (at D=128: 2
    routed experts of width 32, one active; 2 shared experts of width 512; coefficient 0.1).
    """

    num_experts: int = 2
    top_k: int = 1
    num_shared: int = 2
    expert_ff: int | None = None
    shared_ff: int | None = None
    balance_coef: float = 0.1

    def widths(self, d_model: int) -> tuple[int, int]:
        """``(expert_ff, shared_ff)`` for a model of width ``d_model``."""
        return self.expert_ff or max(1, d_model // 4), self.shared_ff or 4 * d_model

    def __post_init__(self) -> None:
        for name, low in (("num_experts", 1), ("top_k", 1), ("num_shared", 0)):
            _check_int("MoEConfig", name, getattr(self, name), low)
        for name in ("expert_ff", "shared_ff"):
            value = getattr(self, name)
            if value is not None:
                _check_int("MoEConfig", name, value, 1)
        if self.top_k > self.num_experts:
            _fail("top_k", self.top_k, f"an int in [1, num_experts={self.num_experts}]", "MoEConfig")
        if not float(self.balance_coef) >= 0.0:
            _fail("balance_coef", self.balance_coef, "a float >= 0", "MoEConfig")


# The published configurations' options (ELMUR.md sections 3 and 5), pinned in every preset
PUBLISHED_OPTIONS = dict(norm="layernorm", norm_position="post", norm_eps=1e-8, detach_memory=True, write_rule="paper",
                         init="torch", cross_attn_out_bias=False, dropout_placement="residual", moe=None)


@dataclass(frozen=True)
class ELMURConfig:
    """Hyper-parameters of the ELMUR backbone (``../shared/ELMUR.md`` sections 2-3).

    Notation: D = ``d_model``, L = ``num_layers``, H = ``num_heads``, M = ``memory_slots``,
    K = ``segment_len``, lambda = ``lru_blend``, sigma = ``memory_init_std``, G = ``max_time_gap``.

    Transformer:
        d_model: token and memory width D (divisible by ``num_heads``).
        num_layers: L, each with its own memory bank.
        num_heads: H, the attention heads.
        d_ff: hidden width of the token and memory feed-forward nets (default 4 * D).
        input_size: width of the incoming token features; a linear projection to D is added
            when it differs from D (default: D, no projection).
        dropout: dropout on residual branches and inside the feed-forward nets.
        attn_dropout: dropout on attention probabilities (self, read and write).
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        norm_position: ``"post"`` (every published configuration) or ``"pre"``.
        norm_eps: epsilon of every norm (the released code uses 1e-8).
        moe: ``None`` (default): the token and memory feed-forward nets are MLPs
            ``Linear(D, d_ff) -> GELU -> dropout -> Linear(d_ff, D)``; a :class:`MoEConfig`:
            mixtures of experts as in the released code (``d_ff`` is then unused).
        init: ``"torch"`` (default): PyTorch's default init for every linear layer, zeros for the
            Transformer-XL biases u, v and the time-gap bias table. ``"released"``: as the
            released code: xavier-uniform weights (per projection, also inside fused ones) and
            zero biases in the attention and feed-forward nets, u and v from N(0, 0.02), the
            time-gap table from N(0, 1) (``nn.Embedding``'s default).
        cross_attn_out_bias: give the read and write cross-attention output projections a bias
            (the released code does; default False).
        dropout_placement: ``"residual"`` (default): ``dropout`` on the token path's residual
            branches and inside both FFNs, ``memory_dropout`` on the write path's residual
            branches. ``"released"``: as the released code: also
            ``dropout`` on the input tokens and on the relative position embedding, ``dropout``
            (not ``memory_dropout``) on the write path's branches, and ``memory_dropout`` only
            on the final write candidate (after the memory FFN and its norm).

    Memory:
        memory_slots: M slots per layer.
        segment_len: K steps per segment; memory is written once per complete segment.
        lru_blend: lambda, the blend factor of the LRU rule.
        memory_init_std: sigma of the fixed initial slot vectors (a buffer drawn once).
        memory_dropout: dropout of the write path (where: see ``dropout_placement``).
        write_rule: ``"paper"`` (empty slot takes the candidate outright, then LRU blend),
            ``"official"`` (blend with lambda even into an empty slot, as the released code), or
            ``"replace_all"`` (the "no LRU" ablation: every slot takes its candidate).
        max_time_gap: G; time gaps are clipped to [-(G-1), G-1] for the learned bias table.
        detach_memory: detach memory when it is committed at a segment boundary, so no gradient
            crosses a segment boundary through memory (every published configuration, and its
            presets here). ``False`` (default) keeps the graph across all segments of one call,
            so the write path (write attention, memory FFN) is trained. With detach it never
            receives a gradient and keeps its initial weights, so its init decides how the memory
            evolves over many segments.

    Defaults. The sizes are the published T-Maze model's; the options (LayerNorm, PyTorch init, MLP
    FFN, no dropout, the paper's write rule, no detach: ``OPTION_SETS["bare-no-detach"]``) were
    chosen among five option sets on the project's three benchmark families
    (``benchmarks/default_options.py``, this project's 2-core CPU, 2026-12-03; the table is in
    ``benchmarks/README.md``): online PPO on RepeatFirstEasy, greedy return over 3 seeds
    +0.90, +0.83 at worst (published detach: +0.68, the POPGym preset's RMSNorm: +0.63; the released
    code's options carry dropout, which PPO's exact replay refuses); POPGym BC, 6-task sum
    +2.77 / +2.95 on seeds 0 / 1 (published detach +2.58, RMSNorm +2.79 / +2.85, released
    +2.28); T-Maze BC to corridor 10,000: none of the dropout-free sets generalises (0 of 3
    seeds each); only the released code's options with dropout and detach do (3 of 3), so the
    T-Maze tutorial runs the named preset :meth:`tmaze_released`.
    """

    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 2
    d_ff: int | None = None
    input_size: int | None = None
    dropout: float = 0.0
    attn_dropout: float = 0.0
    norm: str = "layernorm"
    norm_position: str = "post"
    norm_eps: float = 1e-5
    memory_slots: int = 2
    segment_len: int = 10
    lru_blend: float = 0.79
    memory_init_std: float = 0.001
    memory_dropout: float = 0.0
    write_rule: str = "paper"
    max_time_gap: int = 1024
    detach_memory: bool = False
    moe: MoEConfig | None = None
    init: str = "torch"
    cross_attn_out_bias: bool = False
    dropout_placement: str = "residual"

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "num_heads", "memory_slots", "segment_len", "max_time_gap"):
            _check_int("ELMURConfig", name, getattr(self, name), 1)
        for name in ("d_ff", "input_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                _fail(name, value, "None or an int >= 1")
        if self.d_model % self.num_heads:
            _fail("d_model", self.d_model, f"a multiple of num_heads={self.num_heads}")
        for name in ("dropout", "attn_dropout", "memory_dropout"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                _fail(name, value, "a float in [0, 1)")
        if not 0.0 <= float(self.lru_blend) <= 1.0:
            _fail("lru_blend", self.lru_blend, "a float in [0, 1]")
        if not float(self.memory_init_std) >= 0.0:
            _fail("memory_init_std", self.memory_init_std, "a float >= 0")
        if not float(self.norm_eps) > 0.0:
            _fail("norm_eps", self.norm_eps, "a float > 0")
        if self.norm not in NORMS:
            _fail("norm", self.norm, f"one of {NORMS}")
        if self.norm_position not in NORM_POSITIONS:
            _fail("norm_position", self.norm_position, f"one of {NORM_POSITIONS}")
        if self.write_rule not in WRITE_RULES:
            _fail("write_rule", self.write_rule, f"one of {WRITE_RULES}")
        for name in ("detach_memory", "cross_attn_out_bias"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "a bool")
        if self.moe is not None and not isinstance(self.moe, MoEConfig):
            _fail("moe", self.moe, "None or a MoEConfig")
        if self.init not in INITS:
            _fail("init", self.init, f"one of {INITS}")
        if self.dropout_placement not in DROPOUT_PLACEMENTS:
            _fail("dropout_placement", self.dropout_placement, f"one of {DROPOUT_PLACEMENTS}")

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def ff_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def token_size(self) -> int:
        """Width of the features the backbone accepts (``input_size`` or D)."""
        return self.input_size if self.input_size is not None else self.d_model

    def replace(self, **changes) -> "ELMURConfig":
        """A copy with some fields changed (validated again); unknown names raise TypeError."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ published presets
    # ELMUR.md section 5. All post-LN with relative positions; LayerNorm eps 1e-8 as released; memory
    # detached at segment boundaries. Every option a preset relies on is named (PUBLISHED_OPTIONS), so
    # a change of ELMURConfig's defaults never changes a published preset.
    @classmethod
    def tmaze(cls, **changes) -> "ELMURConfig":
        """T-Maze: D=128, L=2, H=2, M=2, K=10, lambda=0.79, sigma=0.001, dropout 0.10 / attn 0.17 / memory 0.01.

        The published hyper-parameters with this project's plain architecture (PyTorch init, MLP
        FFN). With them a memory that blends every segment (lambda 0.79, detached as published)
        does not generalise: trained on 30-step episodes, success falls below 0.95 from corridor
        300-1000 in 3 of 3 seeds (``benchmarks/tmaze_fidelity.py``, variant ``published``). Use
        :meth:`tmaze_released` (``write_rule="paper"`` for the paper's rule) for a T-Maze model
        that does.
        """
        base = dict(d_model=128, num_layers=2, num_heads=2, memory_slots=2, segment_len=10,
                    lru_blend=0.79, memory_init_std=0.001, dropout=0.10, attn_dropout=0.17, memory_dropout=0.01,
                    **PUBLISHED_OPTIONS)
        return cls(**{**base, **changes})

    @classmethod
    def tmaze_released(cls, **changes) -> "ELMURConfig":
        """The released code's T-Maze model, as closely as this implementation reproduces it.

        :meth:`tmaze` plus what the released code does beyond the layer equations
        (``../shared/ELMUR.md`` section 7): its init (``init="released"``), biased cross-attention
        output projections, its dropout placement, its mixture-of-experts FFN (2 routed SwiGLU
        experts of width 32, one active, 2 shared of width 512, balance coefficient 0.1; the
        T-Maze command line of the released README) and its write rule (``"official"``: blend
        with lambda even into an empty slot). Kept deviations: chronological token times,
        within-segment relative distances, a fixed initial memory (a buffer, not drawn per
        episode). 2.11M parameters in the backbone (the paper reports 2.1M).

        Trained by the BC tutorial's recipe on 30-step episodes it keeps >= 0.95 up to corridor
        10,000 in 3 of 3 seeds with either write rule (``benchmarks/tmaze_fidelity.py``, variants
        ``released`` and ``released-paper``); no single one of the four options does it alone.
        """
        return cls.tmaze(**{**released_options(), "write_rule": "official", **changes})

    @classmethod
    def popgym(cls, **changes) -> "ELMURConfig":
        """POPGym (AutoencodeEasy): D=64, L=12, H=4, M=8, K=35, lambda=0.79, sigma=0, RMSNorm."""
        base = dict(d_model=64, num_layers=12, num_heads=4, memory_slots=8, segment_len=35,
                    lru_blend=0.79, memory_init_std=0.0, **{**PUBLISHED_OPTIONS, "norm": "rmsnorm"})
        return cls(**{**base, **changes})

    @classmethod
    def mikasa_remember_color(cls, **changes) -> "ELMURConfig":
        """MIKASA RememberColor3/5/9: D=128, L=4, H=16, M=256, K=20, lambda=0.41, sigma=0.1."""
        base = dict(d_model=128, num_layers=4, num_heads=16, memory_slots=256, segment_len=20,
                    lru_blend=0.41, memory_init_std=0.1, **PUBLISHED_OPTIONS)
        return cls(**{**base, **changes})

    @classmethod
    def mikasa_take_it_back(cls, **changes) -> "ELMURConfig":
        """MIKASA TakeItBack: D=32, L=2, H=16, M=32, K=60, lambda=0.19, sigma=0.001."""
        base = dict(d_model=32, num_layers=2, num_heads=16, memory_slots=32, segment_len=60,
                    lru_blend=0.19, memory_init_std=0.001, **PUBLISHED_OPTIONS)
        return cls(**{**base, **changes})


def released_options() -> dict:
    """The four things the released code does beyond the layer equations, as ``ELMURConfig`` fields:
    its init, biased cross-attention output projections, its dropout sites and its mixture of
    experts (``../shared/ELMUR.md`` section 7; :meth:`ELMURConfig.tmaze_released` adds its write rule).

    Examples:
        >>> ELMURConfig(**released_options()).init
        'released'
    """
    return dict(init="released", cross_attn_out_bias=True, dropout_placement="released", moe=MoEConfig())


# Everything in ELMURConfig that is not a size: the choices that decide how the memory trains.
OPTION_FIELDS = ("norm", "norm_eps", "detach_memory", "dropout", "attn_dropout", "memory_dropout", "init",
                 "cross_attn_out_bias", "dropout_placement", "moe", "write_rule")
_BARE = dict(norm="layernorm", norm_eps=1e-5, detach_memory=True, dropout=0.0, attn_dropout=0.0, memory_dropout=0.0,
             init="torch", cross_attn_out_bias=False, dropout_placement="residual", moe=None, write_rule="paper")
_RELEASED = dict(_BARE, norm_eps=1e-8, dropout=0.10, attn_dropout=0.17, memory_dropout=0.01, **released_options())
OPTION_SETS: dict[str, dict] = {
    # torch init, MLP FFN, LayerNorm, no dropout, detach: ELMURConfig()'s options up to 2026-12-03
    "bare": _BARE,
    # the same without detach: ELMURConfig()'s options since 2026-12-03 (its docstring says why)
    "bare-no-detach": dict(_BARE, detach_memory=False),
    # what the POPGym suite and the online PPO tutorial used up to 2026-12-03 (published POPGym norm)
    "rmsnorm-no-detach": dict(_BARE, norm="rmsnorm", norm_eps=1e-8, detach_memory=False),
    # the released code's options with the published T-Maze dropouts (tmaze_fidelity's ``released-paper``)
    "released": _RELEASED,
    "released-no-detach": dict(_RELEASED, detach_memory=False),
}


# The names of OPTION_SETS, as a type: a command-line field ``options: OptionSetName | None`` offers them as choices.
OptionSetName = Literal["bare", "bare-no-detach", "rmsnorm-no-detach", "released", "released-no-detach"]


def with_options(config: ELMURConfig, name: str) -> ELMURConfig:
    """``config`` with every field of ``OPTION_FIELDS`` taken from ``OPTION_SETS[name]`` (sizes kept).

    Examples:
        >>> with_options(ELMURConfig(d_model=64, num_heads=4), "rmsnorm-no-detach").norm
        'rmsnorm'
        >>> with_options(ELMURConfig(d_model=64, num_heads=4), "released").d_model
        64
    """
    if name not in OPTION_SETS:
        raise ValueError(f"ELMUR option set {name!r} is unknown: expected one of {list(OPTION_SETS)}.")
    return config.replace(**OPTION_SETS[name])
