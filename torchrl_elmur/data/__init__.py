"""Datasets and samplers."""
from .episode_sampler import EpisodeStartSampler
from .tmaze_dataset import collect_episodes, make_offline_replay_buffer, make_tmaze_dataset

__all__ = ["EpisodeStartSampler", "collect_episodes", "make_offline_replay_buffer", "make_tmaze_dataset"]
