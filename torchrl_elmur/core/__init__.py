"""ELMUR core: pure torch, no TensorDict."""
from .backbone import ELMURBackbone
from .config import ELMURConfig
from .lru import lru_commit, lru_slot
from .reference import window_recompute
from .state import ELMURState

__all__ = ["ELMURBackbone", "ELMURConfig", "ELMURState", "lru_commit", "lru_slot", "window_recompute"]
