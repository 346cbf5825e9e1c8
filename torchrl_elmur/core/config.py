"""Configuration of the ELMUR backbone: one validated dataclass and the published presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("post", "pre")
WRITE_RULES = ("paper", "official", "replace_all")


def _fail(field: str, value, allowed: str) -> None:
    raise ValueError(f"ELMURConfig.{field}={value!r} is invalid: expected {allowed}.")


@dataclass(frozen=True)
class ELMURConfig:
    """Hyper-parameters of the ELMUR backbone (``../shared/ELMUR.md`` sections 2-3).

    Notation: D = ``d_model``, L = ``num_layers``, H = ``num_heads``, M = ``memory_slots``,
    K = ``segment_len``, lambda = ``lru_blend``, sigma = ``memory_init_std``, G = ``max_time_gap``.

    Transformer:
        d_model: token and memory width D (divisible by ``num_heads``).
        num_layers: L, each with its own memory bank.
        num_heads: H.
        d_ff: hidden width of the token and memory feed-forward nets (default 4 * D).
        input_size: width of the incoming token features; a linear projection to D is added
            when it differs from D (default: D, no projection).
        dropout: dropout on residual branches and inside the feed-forward nets.
        attn_dropout: dropout on attention probabilities (self, read and write).
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        norm_position: ``"post"`` (every published configuration) or ``"pre"``.
        norm_eps: epsilon of every norm (the released code uses 1e-8).

    Memory:
        memory_slots: M slots per layer.
        segment_len: K steps per segment; memory is written once per complete segment.
        lru_blend: lambda, the blend factor of the LRU rule.
        memory_init_std: sigma of the fixed initial slot vectors (a buffer drawn once).
        memory_dropout: dropout on the residual branches of the write path.
        write_rule: ``"paper"`` (empty slot takes the candidate outright, then LRU blend),
            ``"official"`` (blend with lambda even into an empty slot, as the released code), or
            ``"replace_all"`` (the "no LRU" ablation: every slot takes its candidate).
        max_time_gap: G; time gaps are clipped to [-(G-1), G-1] for the learned bias table.
        detach_memory: detach memory when it is committed at a segment boundary, so no gradient
            crosses a segment boundary through memory (default, as published). ``False`` keeps
            the graph across all segments of one call.
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
    detach_memory: bool = True

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "num_heads", "memory_slots", "segment_len", "max_time_gap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, value, "an int >= 1")
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
        if not isinstance(self.detach_memory, bool):
            _fail("detach_memory", self.detach_memory, "a bool")

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
    # ELMUR.md section 5. All post-LN with relative positions; LayerNorm eps 1e-8 as released.
    @classmethod
    def tmaze(cls, **changes) -> "ELMURConfig":
        """T-Maze: D=128, L=2, H=2, M=2, K=10, lambda=0.79, sigma=0.001, dropout 0.10 / attn 0.17."""
        base = dict(d_model=128, num_layers=2, num_heads=2, memory_slots=2, segment_len=10,
                    lru_blend=0.79, memory_init_std=0.001, dropout=0.10, attn_dropout=0.17, norm_eps=1e-8)
        return cls(**{**base, **changes})

    @classmethod
    def popgym(cls, **changes) -> "ELMURConfig":
        """POPGym (AutoencodeEasy): D=64, L=12, H=4, M=8, K=35, lambda=0.79, sigma=0, RMSNorm."""
        base = dict(d_model=64, num_layers=12, num_heads=4, memory_slots=8, segment_len=35,
                    lru_blend=0.79, memory_init_std=0.0, norm="rmsnorm", norm_eps=1e-8)
        return cls(**{**base, **changes})

    @classmethod
    def mikasa_remember_color(cls, **changes) -> "ELMURConfig":
        """MIKASA RememberColor3/5/9: D=128, L=4, H=16, M=256, K=20, lambda=0.41, sigma=0.1."""
        base = dict(d_model=128, num_layers=4, num_heads=16, memory_slots=256, segment_len=20,
                    lru_blend=0.41, memory_init_std=0.1, norm_eps=1e-8)
        return cls(**{**base, **changes})

    @classmethod
    def mikasa_take_it_back(cls, **changes) -> "ELMURConfig":
        """MIKASA TakeItBack: D=32, L=2, H=16, M=32, K=60, lambda=0.19, sigma=0.001."""
        base = dict(d_model=32, num_layers=2, num_heads=16, memory_slots=32, segment_len=60,
                    lru_blend=0.19, memory_init_std=0.001, norm_eps=1e-8)
        return cls(**{**base, **changes})
