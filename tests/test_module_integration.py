"""ELMURModule inside the real TorchRL machinery (torchrl 0.14.1): envs, collectors, batched envs,
replay buffers and serialization. No mocks: gymnasium CartPole-v1 / Pendulum-v1 and TorchRL's own
transforms, collectors, samplers.

The central check ("replay == collection"): whatever a collector records while the module runs one
step at a time (step mode) must be reproduced exactly when the same data is run again through the
module in recurrent mode, which restarts every row / slice from the state stored at its start.
"""
from __future__ import annotations

import copy
import functools
import pickle

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import Compose, GymEnv, InitTracker, ParallelEnv, SerialEnv, TensorDictPrimer, TransformedEnv
from torchrl.modules import OneHotCategorical, ProbabilisticActor, set_recurrent_mode

from torchrl_elmur import ELMURModule

# small config: D=16, L=2, H=2, M=2, K=3
D, L, H, M, K = 16, 2, 2, 2, 3
STATE = "recurrent_state"  # GRUModule's default state key; ELMUR's state is a TensorDict under it
FIELDS = ["memory", "memory_time", "tokens", "step"]  # state_layout="tokens" (the default)
STATE_KEYS = [(STATE, name) for name in FIELDS]
NEXT_STATE_KEYS = [("next", *k) for k in STATE_KEYS]


def state_specs(obs_size: int) -> dict:
    """Per-env shape and dtype of every state field (the module docstring's table)."""
    return {
        (STATE, "memory"): ((L, M, D), torch.float32),
        (STATE, "memory_time"): ((L, M), torch.int64),
        (STATE, "tokens"): ((K - 1, obs_size), torch.float32),
        (STATE, "step"): ((1,), torch.int64),
    }


OBS_SIZE = {"CartPole-v1": 4, "Pendulum-v1": 3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------- helpers
def make_module(input_size: int = 4, seed: int = 0, **kwargs) -> ELMURModule:
    torch.manual_seed(seed)
    return ELMURModule(input_size=input_size, hidden_size=D, num_layers=L, num_heads=H, segment_len=K,
                       memory_slots=M, in_key="observation", out_key="embed", **kwargs).eval()


def make_policy(env_name: str = "CartPole-v1", seed: int = 0) -> tuple[nn.Module, ELMURModule]:
    """ELMUR -> linear head -> action. CartPole: OneHotCategorical over logits (GymEnv's CartPole
    action spec is one-hot), biased towards one action so that episodes are short (~10 steps) and
    every rollout crosses resets; Pendulum: tanh of a linear head (inside the [-2, 2] bounds)."""
    module = make_module(OBS_SIZE[env_name], seed)
    if env_name == "CartPole-v1":
        linear = nn.Linear(D, 2)
        with torch.no_grad():
            linear.bias.copy_(torch.tensor([2.0, -2.0]))
        head = TensorDictModule(linear, in_keys=["embed"], out_keys=["logits"])
        policy = ProbabilisticActor(TensorDictSequential(module, head), in_keys=["logits"], out_keys=["action"],
                                    distribution_class=OneHotCategorical)
    else:
        head = TensorDictModule(nn.Sequential(nn.Linear(D, 1), nn.Tanh()), in_keys=["embed"], out_keys=["action"])
        policy = TensorDictSequential(module, head)
    return policy.eval(), module


# env factories live at module level so that spawned workers (ParallelEnv, MultiSyncCollector) can
# unpickle them
def cartpole() -> GymEnv:
    return GymEnv("CartPole-v1")


def pendulum() -> GymEnv:
    return GymEnv("Pendulum-v1")


def cartpole_with_state(module: ELMURModule) -> TransformedEnv:
    return TransformedEnv(GymEnv("CartPole-v1"), Compose(InitTracker(), module.make_tensordict_primer()))


ENV_FACTORIES = {"CartPole-v1": cartpole, "Pendulum-v1": pendulum}


def replay(module: ELMURModule, data: TensorDict) -> TensorDict:
    """Run recorded data again through the module in recurrent mode (time = last batch dim)."""
    with torch.no_grad(), set_recurrent_mode(True):
        return module(data.exclude("embed", "next").clone())


def assert_replay_matches(module: ELMURModule, data: TensorDict) -> None:
    """Replaying recorded data in recurrent mode reproduces the recorded "embed", and the final
    state it writes at the last step of every trajectory piece (before each is_init, and at the end
    of each row) is the ("next", state) recorded there; elsewhere ("next", state) is zero."""
    out = replay(module, data)
    torch.testing.assert_close(out["embed"], data["embed"], rtol=0, atol=1e-5)
    is_init = data["is_init"].squeeze(-1)
    ends = torch.zeros_like(is_init)
    ends[..., :-1] = is_init[..., 1:]
    ends[..., -1] = True
    for key in NEXT_STATE_KEYS:
        torch.testing.assert_close(out[key][ends], data[key][ends], rtol=0, atol=1e-5, msg=f"{key} differs")
        assert not out[key][~ends].any(), f"{key} is not zero inside a trajectory"


def assert_state_keys(data: TensorDict, batch_shape: tuple[int, ...], obs_size: int = 4) -> None:
    """Root and ("next", ...) state keys are present with shape [*batch, *per-env shape] and dtype."""
    keys = set(data.keys(True, True))
    for key, (shape, dtype) in state_specs(obs_size).items():
        for full_key in (key, ("next", *key)):
            assert full_key in keys, f"{full_key} missing; keys: {sorted(map(str, keys))}"
            assert data[full_key].shape == (*batch_shape, *shape), (full_key, data[full_key].shape)
            assert data[full_key].dtype == dtype, (full_key, data[full_key].dtype)


def assert_step_counter_consistent(data: TensorDict) -> None:
    """step is the step within the episode: 0 exactly where is_init is set (root state then
    all zeros), +1 per step; ("next", step) = step + 1."""
    step = data["recurrent_state", "step"].squeeze(-1)
    is_init = data["is_init"].squeeze(-1)
    assert torch.equal(step == 0, is_init)
    torch.testing.assert_close(data["next", "recurrent_state", "step"].squeeze(-1), step + 1, rtol=0, atol=0)
    continuing = ~is_init[..., 1:]
    torch.testing.assert_close(step[..., 1:][continuing], step[..., :-1][continuing] + 1, rtol=0, atol=0)
    for key in STATE_KEYS:
        assert not data[key][is_init].any(), f"{key} is not zero at an episode start"


# ------------------------------------------------------------------------------ GymEnv + rollout
@pytest.fixture(scope="module")
def cartpole_rollout():
    """(policy, module, 60-step rollout of GymEnv("CartPole-v1", policy=policy), not stopping at done)."""
    policy, module = make_policy()
    env = GymEnv("CartPole-v1", policy=policy)
    env.set_seed(0)
    with torch.no_grad():
        data = env.rollout(60, policy, break_when_any_done=False)
    env.close()
    return policy, module, data


class TestGymEnvRollout:
    def test_policy_kwarg_registers_init_tracker_and_primer(self):
        """GymEnv(..., policy=p) wraps the env with InitTracker and the module's primer, so the
        state keys are declared in the env specs with the per-env shapes and dtypes."""
        policy, _ = make_policy()
        env = GymEnv("CartPole-v1", policy=policy)
        assert isinstance(env, TransformedEnv)
        kinds = [type(t) for t in env.transform]
        assert InitTracker in kinds and TensorDictPrimer in kinds
        for key, (shape, dtype) in state_specs(4).items():
            spec = env.full_state_spec[key]
            assert spec.shape == shape and spec.dtype == dtype, (key, spec)
        env.close()

    def test_rollout_carries_state_keys(self, cartpole_rollout):
        """The rollout holds every state key (root and "next") with shape [T, *per-env shape]."""
        _, _, data = cartpole_rollout
        assert data.batch_size == (60,)
        assert_state_keys(data, (60,))
        assert data["embed"].shape == (60, D)

    def test_step_counts_up_and_restarts_after_reset(self, cartpole_rollout):
        """step counts 0, 1, 2, ... within an episode and restarts at 0 after each reset."""
        _, _, data = cartpole_rollout
        assert_step_counter_consistent(data)
        assert data["is_init"][0].item() and data["is_init"][1:].sum() >= 1, "the rollout should cross a reset"

    def test_memory_time_after_first_complete_segment(self, cartpole_rollout):
        """("next", memory_time) stays 0 until the first segment is complete; then, in every layer,
        its newest stamp is 1 + the last step of the latest complete segment = K * ((step + 1) // K)."""
        _, _, data = cartpole_rollout
        step = data["recurrent_state", "step"].squeeze(-1)
        newest = data["next", "recurrent_state", "memory_time"].amax(-1)  # [T, L]
        expected = (K * ((step + 1) // K))[:, None].expand(-1, L)
        torch.testing.assert_close(newest, expected, rtol=0, atol=0)
        assert not data["next", "recurrent_state", "memory_time"][step < K - 1].any()
        assert (data["next", "recurrent_state", "memory_time"][step == K - 1] > 0).any(-1).all()

    def test_rollout_replays_in_recurrent_mode(self, cartpole_rollout):
        """The whole rollout (several episodes in one row) replayed in recurrent mode gives the
        recorded outputs: is_init splits the row into independent episodes."""
        _, module, data = cartpole_rollout
        assert_replay_matches(module, data)


# ---------------------------------------------------------------------------------- Collector
class TestCollector:
    def test_collects_state_and_replays_exactly(self):
        """Collector(auto_register_policy_transforms=True) on a bare GymEnv records the state keys;
        each batch (the second starts mid-episode, from a stored non-zero state) replayed in
        recurrent mode reproduces the recorded "embed"."""
        policy, module = make_policy()
        collector = Collector(cartpole, policy, frames_per_batch=64, total_frames=128,
                              auto_register_policy_transforms=True)
        collector.set_seed(0)
        batches = [batch.clone() for batch in collector]
        collector.shutdown()
        assert len(batches) == 2
        for batch in batches:
            assert batch.batch_size == (64,)
            assert_state_keys(batch, (64,))
            assert_step_counter_consistent(batch)
            assert_replay_matches(module, batch)
        assert batches[1]["recurrent_state", "step"][0].item() > 0, "the second batch should start mid-episode"

    def test_split_trajs_padded_batch_replays(self):
        """With split_trajs=True the batch is [n_traj, T_max], zero-padded after each trajectory
        (pieces of an episode cut by the batch boundary start mid-episode): replaying it gives the
        recorded "embed" at every real (mask=True) step."""
        policy, module = make_policy()
        collector = Collector(cartpole, policy, frames_per_batch=64, total_frames=128, split_trajs=True,
                              auto_register_policy_transforms=True)
        collector.set_seed(0)
        batches = [batch.clone() for batch in collector]
        collector.shutdown()
        assert any((batch["recurrent_state", "step"][:, 0] > 0).any() for batch in batches[1:])
        for batch in batches:
            mask = batch["collector", "mask"]
            assert batch.ndim == 2 and not mask.all()
            torch.testing.assert_close(replay(module, batch)["embed"][mask], batch["embed"][mask], rtol=0, atol=1e-5)

    def test_bare_env_with_default_setting_raises_keyerror_is_init(self):
        """Without the primer and with the default auto_register_policy_transforms=None, TorchRL
        only warns (FutureWarning) and the module, which gets no "is_init", raises KeyError."""
        policy, _ = make_policy()
        with pytest.warns(FutureWarning, match="auto_register_policy_transforms"), \
                pytest.raises(KeyError, match="is_init"):
            collector = Collector(cartpole, policy, frames_per_batch=8, total_frames=8)
            try:
                next(iter(collector))
            finally:
                collector.shutdown()

    @pytest.mark.parametrize("recurrent", [False, True], ids=["step", "recurrent"])
    def test_module_keyerror_names_is_init(self, recurrent):
        """The module itself raises a KeyError naming 'is_init' (and the fix) when it is missing."""
        module = make_module()
        td = TensorDict({"observation": torch.randn(5, 4)}, [5])
        with set_recurrent_mode(recurrent), pytest.raises(KeyError, match="'is_init' not found.*InitTracker"):
            module(td)

    def test_init_tracker_without_primer_drops_the_state(self):
        """Documents TorchRL's behaviour: with InitTracker but no primer (and auto-registration off)
        the collector keeps no state between steps: no root state keys are recorded and every step
        starts fresh (("next", step) == 1 everywhere), silently."""
        policy, _ = make_policy()
        collector = Collector(lambda: TransformedEnv(GymEnv("CartPole-v1"), InitTracker()), policy,
                              frames_per_batch=16, total_frames=16, auto_register_policy_transforms=False)
        batch = next(iter(collector))
        collector.shutdown()
        assert not set(STATE_KEYS) & set(batch.keys())
        assert (batch["next", "recurrent_state", "step"] == 1).all()


class TestMultiSyncCollector:
    def test_two_workers_collect_state_and_follow_weight_updates(self):
        """MultiSyncCollector with 2 spawned workers (the policy is pickled): batches [2, T] hold the
        state keys and replay exactly; after update_policy_weights_() the workers use the new
        weights, including the memory_init buffer."""
        policy, module = make_policy()
        collector = MultiSyncCollector([cartpole, cartpole], policy, frames_per_batch=32, total_frames=64,
                                       auto_register_policy_transforms=True)
        collector.set_seed(0)
        try:
            batches = []
            for i, batch in enumerate(collector):
                batches.append(batch.clone())
                if i == 0:
                    old_module = copy.deepcopy(module)
                    with torch.no_grad():
                        module.backbone.memory_init.normal_(0.0, 1.0)
                    collector.update_policy_weights_()
        finally:
            collector.shutdown()
        assert len(batches) == 2
        for batch in batches:
            assert batch.batch_size == (2, 16)
            assert_state_keys(batch, (2, 16))
            assert_step_counter_consistent(batch)
        assert_replay_matches(old_module, batches[0])
        assert_replay_matches(module, batches[1])
        assert not torch.allclose(replay(old_module, batches[1])["embed"], batches[1]["embed"], atol=1e-4)


# ------------------------------------------------------------------------------- batched envs
def make_batched_env(env_cls, placement: str, module: ELMURModule):
    if placement == "inside":  # InitTracker + primer in every sub-env
        return env_cls(2, functools.partial(cartpole_with_state, module))
    return TransformedEnv(env_cls(2, cartpole), Compose(InitTracker(), module.make_tensordict_primer()))


class TestBatchedEnvs:
    @pytest.mark.parametrize("placement", ["inside", "outside"])
    @pytest.mark.parametrize("env_cls", [SerialEnv, ParallelEnv])
    def test_rollout_with_primer(self, env_cls, placement):
        """SerialEnv / ParallelEnv of 2 CartPoles, primer inside each sub-env or outside on the
        batched env: the rollout has states [2, T, ...], per-env step counters that restart at each
        env's own resets (partial resets), and replays exactly in recurrent mode."""
        policy, module = make_policy()
        env = make_batched_env(env_cls, placement, module)
        try:
            env.set_seed(0)
            with torch.no_grad():
                data = env.rollout(25, policy, break_when_any_done=False)
        finally:
            env.close()
        assert data.batch_size == (2, 25)
        assert_state_keys(data, (2, 25))
        assert_step_counter_consistent(data)
        assert data["is_init"][:, 1:].any(), "the rollout should cross a reset"
        assert_replay_matches(module, data)


# ------------------------------------------------------------------------------- replay buffer
class TestReplayBuffer:
    @pytest.mark.parametrize("env_name", ["CartPole-v1", "Pendulum-v1"])
    def test_slices_replay_from_stored_state(self, env_name):
        """Collect 300 frames, store them, sample 4 slices of 8 with SliceSampler (traj_key =
        ("collector", "traj_ids")): is_init is marked at every slice start, and running the
        [4, 8] batch (or the flat [32] one) in recurrent mode gives the embed recorded at collection,
        also for slices that start mid-episode and mid-segment (the stored state is used)."""
        policy, module = make_policy(env_name)
        collector = Collector(ENV_FACTORIES[env_name], policy, frames_per_batch=100, total_frames=300,
                              auto_register_policy_transforms=True)
        collector.set_seed(0)
        buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(300),
                                        sampler=SliceSampler(slice_len=8, traj_key=("collector", "traj_ids")),
                                        batch_size=4 * 8)
        for batch in collector:
            buffer.extend(batch)
        collector.shutdown()
        assert len(buffer) == 300
        torch.manual_seed(0)
        first_steps = []
        for _ in range(3):
            sample = buffer.sample()
            assert sample.batch_size == (32,)
            slices = sample.reshape(4, 8)
            assert slices["is_init"][:, 0].all()
            assert torch.equal(slices["collector", "traj_ids"], slices["collector", "traj_ids"][:, :1].expand(-1, 8))
            first_steps.append(slices["recurrent_state", "step"][:, 0, 0])
            assert_replay_matches(module, slices)
            assert_replay_matches(module, sample)
        first_steps = torch.cat(first_steps)
        assert ((first_steps > 0) & (first_steps % K != 0)).any(), "no slice started mid-episode and mid-segment"


# ------------------------------------------------------------------------------- serialization
def step_input(data: TensorDict) -> TensorDict:
    """A [4] step-mode batch: two mid-episode, mid-segment steps (non-zero stored state, partial
    cache) and two episode starts."""
    step = data["recurrent_state", "step"].squeeze(-1)
    mid = ((step > K) & (step % K != 0)).nonzero().squeeze(-1)[:2]
    starts = data["is_init"].squeeze(-1).nonzero().squeeze(-1)[:2]
    assert len(mid) == 2 and len(starts) == 2
    return data[torch.cat([mid, starts])].exclude("embed", "next").clone()


def recurrent_input(data: TensorDict) -> TensorDict:
    """A [2, 20] recurrent-mode batch whose rows start mid-episode and hold resets."""
    step = data["recurrent_state", "step"].squeeze(-1)
    candidates = ((step > K) & (step % K != 0)).nonzero().squeeze(-1).tolist()  # mid-episode, mid-segment
    first = candidates[0]
    second = next(c for c in candidates if c >= first + 20 and c + 20 <= len(step))
    td = torch.stack([data[first:first + 20], data[second:second + 20]]).exclude("embed", "next").clone()
    assert (td["recurrent_state", "step"][:, 0] > 0).all() and td["is_init"][:, 1:].flatten(1).any(-1).all()
    return td


def outputs(module: ELMURModule, td: TensorDict, recurrent: bool) -> TensorDict:
    with torch.no_grad(), set_recurrent_mode(recurrent):
        return module(td.clone()).select("embed", *NEXT_STATE_KEYS)


def assert_td_equal(a: TensorDict, b: TensorDict) -> None:
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{key} differs")


@pytest.mark.parametrize("recurrent", [False, True], ids=["step", "recurrent"])
class TestSerialization:
    @staticmethod
    def inputs(data: TensorDict, recurrent: bool) -> TensorDict:
        return recurrent_input(data) if recurrent else step_input(data)

    def test_state_dict_round_trip(self, cartpole_rollout, recurrent):
        """A fresh module (other seed, so other weights and memory_init) loaded with the state_dict
        gives identical outputs and next states."""
        _, module, data = cartpole_rollout
        td = self.inputs(data, recurrent)
        fresh = make_module(seed=123)
        assert not torch.allclose(outputs(fresh, td, recurrent)["embed"], outputs(module, td, recurrent)["embed"])
        fresh.load_state_dict(module.state_dict())
        assert "backbone.memory_init" in module.state_dict()
        assert_td_equal(outputs(fresh, td, recurrent), outputs(module, td, recurrent))

    def test_pickle_round_trip(self, cartpole_rollout, recurrent):
        """pickle.dumps / loads gives a module with identical outputs and keys."""
        _, module, data = cartpole_rollout
        td = self.inputs(data, recurrent)
        clone = pickle.loads(pickle.dumps(module))
        assert clone.in_keys == module.in_keys and clone.out_keys == module.out_keys
        assert_td_equal(outputs(clone, td, recurrent), outputs(module, td, recurrent))

    def test_rerun_is_identical_and_leaves_inputs_untouched(self, cartpole_rollout, recurrent):
        """Calling the module twice on the same tensordict (as BCLoss does with a stochastic actor)
        gives identical outputs, and the input keys (observation, state keys, is_init) are unchanged."""
        _, module, data = cartpole_rollout
        td = self.inputs(data, recurrent)
        before = td.clone()
        with torch.no_grad(), set_recurrent_mode(recurrent):
            first = module(td).select("embed", *NEXT_STATE_KEYS).clone()
            second = module(td).select("embed", *NEXT_STATE_KEYS)
        assert_td_equal(first, second)
        assert_td_equal(td.select(*module.in_keys), before.select(*module.in_keys))


class TestDtype:
    def test_to_float64_moves_weights_buffers_and_primer_specs(self, cartpole_rollout):
        """.to(torch.float64) converts parameters and the memory_init buffer; the primer then declares
        float64 memory / tokens (int64 stamps and step stay int64), and the module runs on float64
        inputs with the same results as in float32."""
        _, module, data = cartpole_rollout
        module64 = copy.deepcopy(module).to(torch.float64)
        assert module64.backbone.memory_init.dtype == torch.float64
        assert all(p.dtype == torch.float64 for p in module64.parameters())
        assert module64.dtype == torch.float64
        specs = module64.make_tensordict_primer().primers
        assert specs["recurrent_state", "memory"].dtype == torch.float64
        assert specs["recurrent_state", "tokens"].dtype == torch.float64
        assert specs["recurrent_state", "memory_time"].dtype == torch.int64 and specs["recurrent_state", "step"].dtype == torch.int64
        td = recurrent_input(data)
        td64 = td.apply(lambda t: t.double() if t.is_floating_point() else t)
        out64 = outputs(module64, td64, True)
        assert out64["embed"].dtype == torch.float64 and out64["next", "recurrent_state", "memory"].dtype == torch.float64
        torch.testing.assert_close(out64["embed"], outputs(module, td, True)["embed"].double(), rtol=0, atol=1e-5)
