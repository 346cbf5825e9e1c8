"""Training utilities."""
from .bc import BCHistory, train_bc
from .tmaze_eval import episodes_error, evaluate_lengths, plot_success_vs_length, tmaze_success_rate
from .wandb_logger import start_wandb

__all__ = ["BCHistory", "episodes_error", "evaluate_lengths", "plot_success_vs_length", "start_wandb", "tmaze_success_rate", "train_bc"]
