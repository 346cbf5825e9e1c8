"""TorchRL modules built on the ELMUR core."""
from .elmur_module import ELMURModule
from .fast_steps import compile_steps, inplace_steps, set_state_layout
from .encoders import PixelEncoder, Standardize
from .state_keys import recurrent_state_keys, state_key_pairs
from .trajectories import TrajectoryLayout, trajectory_layout

__all__ = ["ELMURModule", "PixelEncoder", "Standardize", "compile_steps", "inplace_steps", "TrajectoryLayout", "recurrent_state_keys", "set_state_layout", "state_key_pairs",
           "trajectory_layout"]
