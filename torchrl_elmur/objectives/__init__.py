"""Losses and value estimators."""
from .recurrent_td0 import RecurrentTD0Estimator
from .sequence_cross_entropy import SequenceCrossEntropyLoss

__all__ = ["RecurrentTD0Estimator", "SequenceCrossEntropyLoss"]
