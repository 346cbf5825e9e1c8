"""Mixed-quality T-Maze data: behaviour policies, composition, rewards, replay-buffer format."""
import pytest
import torch
from torchrl.envs import Compose, InitTracker, TransformedEnv

from torchrl_elmur.data import (
    BEHAVIOURS,
    DEFAULT_FRACTIONS,
    TMazeBehaviour,
    make_offline_replay_buffer,
    make_tmaze_dataset,
    make_tmaze_mixed_dataset,
)
from torchrl_elmur.data.tmaze_mixed import episode_counts
from torchrl_elmur.envs import TMazeEnv
from torchrl_elmur.envs.tmaze_rules import DOWN, RIGHT, UP

E = 60  # episodes of the shared dataset


@pytest.fixture(scope="module")
def data():
    return make_tmaze_mixed_dataset(E, max_corridor=6, seed=3)


def per_episode(data):
    """Per-episode behaviour, return, hint, first and last index (episodes are contiguous)."""
    starts = data["is_init"].squeeze(-1).nonzero().squeeze(-1)
    ends = torch.cat([starts[1:], torch.tensor([data.numel()])]) - 1
    ret = torch.zeros(E).index_add_(0, data["episode"], data["next", "reward"].squeeze(-1))
    return dict(behaviour=data["behaviour"][starts], ret=ret, hint=data["observation"][starts, 1], starts=starts, ends=ends)


def rollout(policy, corridor: int, episodes: int = 8):
    env = TMazeEnv(corridor, batch_size=[episodes], goal_sides="balanced")
    env = TransformedEnv(env, Compose(InitTracker(), policy.make_tensordict_primer()))
    return env.rollout(corridor + 2, policy, break_when_any_done=False)


class TestBehaviourPolicies:
    def test_wrong_turn_walks_the_corridor_and_turns_away_from_the_hint(self):
        td = rollout(TMazeBehaviour(turn="wrong"), corridor=5)
        assert (td["action"][:, :-1] == RIGHT).all()
        assert td["action"][:, -1].tolist() == [DOWN, UP] * 4  # balanced goals: up, down, ...
        assert td["next", "reward"].sum() == 0

    def test_random_turn_pays_half_the_time(self):
        td = rollout(TMazeBehaviour(turn="random", seed=1), corridor=2, episodes=400)
        assert (td["action"][:, :-1] == RIGHT).all()
        assert 0.4 < td["next", "reward"][:, -1].mean().item() < 0.6

    def test_corridor_noise_strays_and_loses(self):
        td = rollout(TMazeBehaviour(turn="correct", corridor_noise=1.0, seed=0), corridor=20)
        assert (td["action"] != RIGHT).float().mean() > 0.6  # uniform over 4 actions
        assert td["next", "reward"].sum() == 0  # never reaches the junction in time

    def test_errors(self):
        with pytest.raises(ValueError, match="turn='left' is invalid"):
            TMazeBehaviour(turn="left")
        with pytest.raises(ValueError, match="corridor_noise=1.5 is invalid"):
            TMazeBehaviour(corridor_noise=1.5)


class TestMixedDataset:
    def test_composition_follows_the_fractions(self, data):
        ep = per_episode(data)
        counts = ep["behaviour"].bincount(minlength=3).tolist()
        assert counts == [round(DEFAULT_FRACTIONS[b] * E) for b in BEHAVIOURS] == [18, 30, 12]
        assert set(ep["behaviour"][:20].tolist()) == {0, 1, 2}  # shuffled across storage order

    def test_rewards_come_from_the_env(self, data):
        ep = per_episode(data)
        assert (ep["ret"][ep["behaviour"] == 0] == 1).all()  # oracle: always right
        assert (ep["ret"][ep["behaviour"] == 1] == 0).all()  # wrong turn: never
        assert set(ep["ret"][ep["behaviour"] == 2].tolist()) <= {0.0, 1.0}
        reward = data["next", "reward"].squeeze(-1)
        last = torch.zeros_like(reward, dtype=torch.bool)
        last[ep["ends"]] = True
        assert reward[~last].sum() == 0  # sparse: only the last step can pay
        assert (data["next", "done"].squeeze(-1) == last).all() and (data["next", "terminated"] == data["next", "done"]).all()
        turns = data["action"][ep["ends"]]  # oracle turns to the hint, wrong_turn away from it
        expected_up = ep["hint"] > 0
        assert ((turns == UP) == expected_up)[ep["behaviour"] == 0].all()
        assert ((turns == UP) == ~expected_up)[ep["behaviour"] == 1].all()

    def test_replay_buffer_format(self, data):
        ep = per_episode(data)
        assert data.batch_dims == 1
        starts = data["is_init"].squeeze(-1)
        assert starts.sum() == E and starts[0]
        assert (data["episode"][ep["starts"]] == torch.arange(E)).all()  # ids 0..E-1 in storage order
        assert (data["episode"].diff() >= 0).all()  # contiguous episodes
        assert ((ep["ends"] - ep["starts"] + 1) == data["corridor_length"][ep["starts"]] + 2).all()  # c + 2 steps
        assert (data["observation"][ep["starts"], 1].abs() == 1).all()  # hint at each episode's first step
        reference = make_tmaze_dataset(4, max_corridor=6)
        assert set(reference.keys(True, True)) <= set(data.keys(True, True))  # the BC format, plus "behaviour"
        batch = make_offline_replay_buffer(data, 3, 10, seed=0).sample().reshape(3, 10)
        assert batch["is_init"][:, 0].all()  # rows start at episode starts
        assert (batch["is_init"].squeeze(-1) == (batch["episode"].diff(dim=1, prepend=batch["episode"][:, :1] - 1) != 0)).all()

    def test_deterministic_and_cached(self, tmp_path):
        first = make_tmaze_mixed_dataset(12, max_corridor=4, seed=5, cache=tmp_path / "mixed.pt")
        again = make_tmaze_mixed_dataset(12, max_corridor=4, seed=5, cache=tmp_path / "mixed.pt")  # from the cache
        fresh = make_tmaze_mixed_dataset(12, max_corridor=4, seed=5)
        for other in (again, fresh):
            assert (other == first).all()
        other_seed = make_tmaze_mixed_dataset(12, max_corridor=4, seed=6)
        assert other_seed.shape != first.shape or not (other_seed == first).all()

    def test_all_oracle_is_the_bc_dataset_shuffled(self):
        mixed = make_tmaze_mixed_dataset(16, fractions={"oracle": 1.0}, max_corridor=5, seed=2)
        oracle = make_tmaze_dataset(16, max_corridor=5, seed=2)
        assert mixed.numel() == oracle.numel() and (mixed["behaviour"] == 0).all()
        # same episodes (hint, first noise, length), in another order
        def episodes(d):
            starts = d["is_init"].squeeze(-1)
            return sorted(zip(d["corridor_length"][starts].tolist(), d["observation"][starts].tolist()))

        assert episodes(mixed) == episodes(oracle)

    def test_fraction_errors(self):
        with pytest.raises(ValueError, match="sum to 1"):
            make_tmaze_mixed_dataset(10, fractions={"oracle": 0.5, "wander": 0.4})
        with pytest.raises(ValueError, match="unknown behaviour"):
            episode_counts(10, {"oracle": 0.5, "expert": 0.5})
        assert episode_counts(7, {"oracle": 0.5, "wrong_turn": 0.5}) == {"oracle": 4, "wrong_turn": 3, "wander": 0}
