"""torchrl_elmur: ELMUR (External Layer Memory with Update/Rewrite) for TorchRL."""
from .core import ELMURBackbone, ELMURConfig, ELMURState, lru_commit, lru_slot, window_recompute
from .modules import ELMURModule, compile_steps, inplace_steps, set_state_layout

__all__ = ["ELMURModule", "compile_steps", "inplace_steps", "set_state_layout", "ELMURBackbone", "ELMURConfig", "ELMURState", "lru_commit", "lru_slot", "window_recompute"]
__version__ = "0.1.0"
