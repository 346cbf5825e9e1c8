"""Datasets and samplers."""
from .episode_sampler import EpisodeStartSampler
from .mikasa_dataset import make_mikasa_dataset
from .popgym_dataset import make_popgym_dataset
from .row_states import RowStartStates, recurrent_state_keys
from .storage import EVAL_SEED, VALIDATION_SEED, cached_dataset, make_offline_replay_buffer
from .tmaze_dataset import collect_episodes, make_tmaze_dataset
from .tmaze_mixed import BEHAVIOURS, DEFAULT_FRACTIONS, TMazeBehaviour, make_tmaze_mixed_dataset

__all__ = ["BEHAVIOURS", "DEFAULT_FRACTIONS", "EVAL_SEED", "VALIDATION_SEED", "cached_dataset", "EpisodeStartSampler", "RowStartStates", "TMazeBehaviour", "collect_episodes",
           "make_mikasa_dataset", "make_offline_replay_buffer", "make_popgym_dataset", "make_tmaze_dataset", "make_tmaze_mixed_dataset",
           "recurrent_state_keys"]
