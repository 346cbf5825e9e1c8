"""TorchRL modules built on the ELMUR core."""
from .elmur_module import ELMURModule, set_state_layout
from .trajectories import TrajectoryLayout, trajectory_layout

__all__ = ["ELMURModule", "TrajectoryLayout", "set_state_layout", "trajectory_layout"]
