"""Training utilities."""
from .tmaze_eval import tmaze_success_rate
from .wandb_logger import start_wandb

__all__ = ["start_wandb", "tmaze_success_rate"]
