"""TorchRL modules built on the ELMUR core."""
from .elmur_module import ELMURModule
from .trajectories import TrajectoryLayout, trajectory_layout

__all__ = ["ELMURModule", "TrajectoryLayout", "trajectory_layout"]
