"""Environments: the passive T-Maze (batched TorchRL env and gymnasium env), POPGym's 48 tasks and MIKASA-Robo."""
import gymnasium as _gym

from . import tmaze_rules
from .mikasa_env import MIKASA_TASKS, ManiSkillEnv, make_mikasa_env
from .popgym_env import make_popgym_env, make_popgym_gym, popgym_tasks
from .tmaze_env import TMazeEnv
from .tmaze_gym import TMazeGymEnv
from .tmaze_oracle import TMazeOracle

TMAZE_ID = "torchrl_elmur/TMaze-v0"
if TMAZE_ID not in _gym.registry:
    _gym.register(id=TMAZE_ID, entry_point="torchrl_elmur.envs.tmaze_gym:TMazeGymEnv")

__all__ = ["MIKASA_TASKS", "ManiSkillEnv", "TMAZE_ID", "TMazeEnv", "TMazeGymEnv", "TMazeOracle", "make_mikasa_env", "make_popgym_env", "make_popgym_gym", "popgym_tasks",
           "tmaze_rules"]
