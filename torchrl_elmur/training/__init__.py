"""Training utilities."""
from .wandb_logger import start_wandb

__all__ = ["start_wandb"]
