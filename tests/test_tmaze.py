"""T-Maze: dynamics, batched env == gymnasium env, oracle, dataset and sampler."""
import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.envs import Compose, GymWrapper, InitTracker, TransformedEnv, check_env_specs
from torchrl.envs.utils import step_mdp

from torchrl_elmur.data import EpisodeStartSampler, make_offline_replay_buffer, make_tmaze_dataset
from torchrl_elmur.envs import TMAZE_ID, TMazeEnv, TMazeGymEnv, TMazeOracle
from torchrl_elmur.envs.tmaze_rules import DOWN, LEFT, RIGHT, UP


def run_actions(env, actions):
    td = env.reset()
    obs, rewards, dones = [td["observation"]], [], []
    for a in actions:
        td["action"] = torch.as_tensor(a).expand(env.batch_size)
        td = env.step(td)
        obs.append(td["next", "observation"])
        rewards.append(td["next", "reward"])
        dones.append(td["next", "done"])
        td = step_mdp(td)
    return torch.stack(obs, 1), torch.stack(rewards, 1), torch.stack(dones, 1)


class TestDynamics:
    def test_specs(self):
        check_env_specs(TMazeEnv(corridor_length=torch.tensor([1, 4, 9]), batch_size=[3]))

    def test_errors(self):
        with pytest.raises(ValueError, match="corridor_length must be >= 1, received 0"):
            TMazeEnv(corridor_length=0)
        with pytest.raises(ValueError, match="goal_sides='left' is invalid"):
            TMazeEnv(goal_sides="left")

    def test_observation_layout_and_hint_only_at_reset(self):
        c = 3
        env = TMazeEnv(corridor_length=c, batch_size=[2], goal_sides="balanced")
        obs, reward, done = run_actions(env, [RIGHT] * (c + 1) + [UP])
        assert obs.shape == (2, c + 3, 4)
        assert obs[:, 0, 1].tolist() == [1.0, -1.0]  # hint at reset
        assert (obs[:, 1:, 1] == 0).all()  # and never again
        assert obs[:, :, 2].tolist()[0] == [0, 0, 0, 0, 1, 0]  # flag at the junction (x = c + 1)
        assert set(obs[:, :, 3].unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert obs[:, :-1, 0].abs().sum() == 0  # y = 0 in the corridor
        assert obs[0, -1, 0] == 1 and obs[1, -1, 0] == 1  # both moved up at the end
        assert reward.squeeze(-1)[:, -1].tolist() == [1.0, 0.0]  # only the goal side pays
        assert reward[:, :-1].sum() == 0
        assert done.squeeze(-1).tolist() == [[False] * (c + 1) + [True]] * 2  # c + 2 steps

    def test_reward_needs_the_junction(self):
        c = 4
        env = TMazeEnv(corridor_length=c, batch_size=[2], goal_sides="balanced")
        # one step wasted (left at the start does not move), so the last action is not at the junction
        _, reward, done = run_actions(env, [LEFT] + [RIGHT] * c + [UP])
        assert reward.sum() == 0 and done[:, -1].all()
        _, reward, _ = run_actions(env, [RIGHT] * (c + 1) + [DOWN])
        assert reward.squeeze(-1)[:, -1].tolist() == [0.0, 1.0]

    def test_noise_is_uniform(self):
        env = TMazeEnv(corridor_length=500, batch_size=[4])
        obs, _, _ = run_actions(env, [RIGHT] * 502)
        counts = torch.stack([(obs[..., 3] == v).float().mean() for v in (-1, 0, 1)])
        assert (counts - 1 / 3).abs().max() < 0.03

    def test_random_goals_differ_across_episodes(self):
        env = TMazeEnv(corridor_length=2, batch_size=[64], seed=5)
        hints = env.reset()["observation"][:, 1]
        assert 16 < (hints > 0).sum() < 48

    def test_batched_equals_gymnasium_on_a_seed(self):
        c, seed = 5, 11
        env = TMazeEnv(corridor_length=c, batch_size=[3], seed=seed)
        rng = np.random.default_rng(0)
        actions = rng.integers(0, 4, size=(2 * (c + 2), 3))  # two episodes per row
        batched_obs, batched_rew = [], []
        td = env.reset()
        for t in range(2 * (c + 2)):
            if t == c + 2:
                td = env.reset()
            batched_obs.append(td["observation"].clone())
            td["action"] = torch.as_tensor(actions[t])
            td = env.step(td)
            batched_rew.append(td["next", "reward"].squeeze(-1))
            td = step_mdp(td)
        for i in range(3):
            g = gym.make(TMAZE_ID, corridor_length=c)
            obs, _ = g.reset(seed=seed + i)
            for t in range(2 * (c + 2)):
                if t == c + 2:
                    obs, _ = g.reset()
                np.testing.assert_array_equal(obs, batched_obs[t][i].numpy())
                obs, r, terminated, truncated, _ = g.step(int(actions[t, i]))
                assert r == batched_rew[t][i].item()
                assert terminated == (t % (c + 2) == c + 1) and not truncated

    def test_gym_env_through_torchrl(self):
        env = GymWrapper(TMazeGymEnv(corridor_length=3), categorical_action_encoding=True)
        check_env_specs(env)


class TestOracle:
    @pytest.mark.parametrize("c", [1, 7, 50])
    def test_oracle_always_succeeds(self, c):
        oracle = TMazeOracle()
        env = TransformedEnv(TMazeEnv(c, batch_size=[20], seed=3), Compose(InitTracker(), oracle.make_tensordict_primer()))
        rollout = env.rollout(c + 2, oracle)
        assert rollout.shape == (20, c + 2)
        assert (rollout["next", "reward"].sum((1, 2)) == 1).all()


class TestDataset:
    def test_shapes_ids_and_is_init(self):
        data = make_tmaze_dataset(num_episodes=50, seed=1)
        lengths = data["corridor_length"]
        n_per_episode = torch.bincount(data["episode"])
        assert len(n_per_episode) == 50
        first = torch.cat([torch.zeros(1, dtype=torch.long), n_per_episode.cumsum(0)[:-1]])
        assert torch.equal(n_per_episode, lengths[first] + 2)  # episode length c + 2
        assert data["is_init"].squeeze(-1).nonzero().squeeze(-1).tolist() == first.tolist()
        assert (lengths >= 1).all() and (lengths <= 28).all() and n_per_episode.max() <= 30
        assert data["next", "reward"].sum() == 50  # every oracle episode succeeds
        assert data["next", "done"].sum() == 50
        assert data["action"].dtype == torch.int64 and data["observation"].shape[-1] == 4
        assert torch.equal(data["next", "observation"][:-1][~data["next", "done"][:-1].squeeze(-1)],
                           data["observation"][1:][~data["next", "done"][:-1].squeeze(-1)])

    def test_deterministic_and_cached(self, tmp_path):
        a = make_tmaze_dataset(num_episodes=20, seed=3, cache=tmp_path / "d")
        b = make_tmaze_dataset(num_episodes=20, seed=3)
        c = make_tmaze_dataset(num_episodes=20, seed=4)
        assert (tmp_path / "d" / "meta.json").exists()
        assert torch.equal(a["observation"], b["observation"])
        assert not torch.equal(a["corridor_length"], c["corridor_length"][: len(a)] if len(c) >= len(a) else c["corridor_length"])
        again = make_tmaze_dataset(num_episodes=20, seed=3, cache=tmp_path / "d")
        assert torch.equal(again["action"], a["action"])

    def test_episode_aligned_batches(self):
        data = make_tmaze_dataset(num_episodes=40, seed=2)
        rb = make_offline_replay_buffer(data, batch_size=8, seq_len=30, seed=0)
        batch = rb.sample().reshape(8, 30)
        assert batch["is_init"][:, 0].all()  # every row starts an episode
        ep = batch["episode"]
        step_in_row = torch.arange(30)
        for row in range(8):  # consecutive transitions; is_init exactly where the episode id changes
            changes = (ep[row, 1:] != ep[row, :-1]).nonzero().squeeze(-1) + 1
            assert batch["is_init"][row].squeeze(-1).nonzero().squeeze(-1).tolist() == [0, *changes.tolist()]
        assert step_in_row.numel() == 30

    def test_sampler_errors(self):
        with pytest.raises(ValueError, match="seq_len must be >= 1"):
            EpisodeStartSampler(0)
        data = make_tmaze_dataset(num_episodes=5)
        rb = make_offline_replay_buffer(data, batch_size=2, seq_len=7)
        with pytest.raises(ValueError, match="batch_size=10 must be a multiple of seq_len=7"):
            rb.sample(10)


class TestEvaluation:
    def test_greedy_oracle_and_training_mode_restored(self):
        """tmaze_success_rate runs the policy greedily in eval mode and gives its mode back."""
        from torch import nn

        from torchrl_elmur.training import tmaze_success_rate

        oracle = TMazeOracle()
        probe = nn.Dropout()  # a submodule whose mode is observable
        oracle.probe = probe
        oracle.train()
        assert tmaze_success_rate(oracle, 6, episodes=8) == 1.0
        assert oracle.training and probe.training
        oracle.eval()
        tmaze_success_rate(oracle, 3, episodes=4)
        assert not oracle.training
        with pytest.raises(ValueError, match="episodes must be even and >= 2, received 3"):
            tmaze_success_rate(oracle, 3, episodes=3)

    def test_evaluate_lengths_skips_after_chance(self, capsys):
        """A policy that forgets the hint (always up at the junction) scores 0.5 on balanced goals;
        with skip_at_chance=2 the lengths after two such scores are not evaluated."""
        from tensordict.nn import TensorDictModule

        from torchrl_elmur.training import evaluate_lengths

        forgetful = TensorDictModule(lambda obs: torch.where(obs[..., 2] == 1, UP, RIGHT), ["observation"], ["action"])
        success, seconds = evaluate_lengths(forgetful, [3, 5, 7, 9], 4, seed=0, name="f", skip_at_chance=2)
        assert success == {"3": 0.5, "5": 0.5} and set(seconds) == {"3", "5"}
        assert "corridor         7" not in capsys.readouterr().out
        success, _ = evaluate_lengths(forgetful, [3, 5, 7], 4, seed=0, name="f")
        assert success == {"3": 0.5, "5": 0.5, "7": 0.5}
        success, _ = evaluate_lengths(TMazeOracle(), [3, 5, 7], 4, seed=0, name="o", skip_at_chance=1)
        assert success == {"3": 1.0, "5": 1.0, "7": 1.0}
