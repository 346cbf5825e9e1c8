"""Losses and value estimators."""
from .recurrent_td0 import RecurrentTD0Estimator
from .sequence_cross_entropy import SequenceCrossEntropyLoss
from .sequence_mse import SequenceMSELoss
from .slice_starts import mark_next_slice_starts

__all__ = ["RecurrentTD0Estimator", "SequenceCrossEntropyLoss", "SequenceMSELoss", "mark_next_slice_starts"]
