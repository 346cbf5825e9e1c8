"""Losses."""
from .sequence_cross_entropy import SequenceCrossEntropyLoss

__all__ = ["SequenceCrossEntropyLoss"]
