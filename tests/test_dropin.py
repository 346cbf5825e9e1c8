"""Code written for GRUModule / LSTMModule runs with ELMURModule: the patterns of TorchRL's own
recurrent examples (torchrl 0.14.1), with the memory class as the only parameter.

- the replay-buffer pipeline (examples/replay-buffers/recurrent_slice_sampler_pipeline.py): one
  state key ``recurrent_state``, Collector, SliceSampler, replay in recurrent mode;
- the recurrent state lifecycle (docs: GRU actor and critic with keys ``actor_rs`` / ``critic_rs``,
  GAE, ClipPPOLoss);
- the recurrent sequence tutorial (LSTMModule's two state keys ``rs_h, rs_c``, BurnInTransform);
- recurrent DQN (tutorials/sphinx-tutorials/dqn_with_rnn.py on state observations):
  LazyMemmapStorage + SliceSampler + DQNLoss, whose next-Q must match the collection-time Q.

Every constructor call below is GRUModule's / LSTMModule's call, keyword for keyword.
"""
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import GymEnv, InitTracker, StepCounter, TransformedEnv
from torchrl.envs.transforms import BurnInTransform
from torchrl.modules import GRUModule, LSTMModule, MLP, ProbabilisticActor, QValueModule, ValueOperator, set_recurrent_mode
from torchrl.objectives import ClipPPOLoss, DQNLoss
from torchrl.objectives.value import GAE
from torchrl.modules.utils import get_primers_from_module

from torchrl_elmur import ELMURModule
from torchrl_elmur.objectives import mark_next_slice_starts

HIDDEN = 16
N_OBS, N_ACT = 4, 2  # CartPole-v1
TRAJ = ("collector", "traj_ids")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gru_like(name: str):
    return {"gru": GRUModule, "elmur": ELMURModule}[name]


def lstm_like(name: str):
    return {"lstm": LSTMModule, "elmur": ELMURModule}[name]


def env_for(policy) -> TransformedEnv:
    env = TransformedEnv(GymEnv("CartPole-v1"), InitTracker())
    env.append_transform(get_primers_from_module(policy))  # TorchRL's own primer lookup, as collectors do
    return env


def collect(policy, frames: int, env=None) -> TensorDict:
    torch.manual_seed(0)
    collector = Collector(env or env_for(policy), policy, frames_per_batch=frames, total_frames=frames)
    collector.set_seed(0)
    try:
        return next(iter(collector)).clone()
    finally:
        collector.shutdown()


# ------------------------------------------------------------------ replay-buffer pipeline (GRU layout)
@pytest.mark.parametrize("memory", ["gru", "elmur"])
def test_slice_sampler_pipeline_replays_exactly(memory):
    torch.manual_seed(0)
    embed = Mod(nn.Linear(N_OBS, HIDDEN), in_keys=["observation"], out_keys=["embed"])
    rnn = gru_like(memory)(
        input_size=HIDDEN,
        hidden_size=HIDDEN,
        num_layers=1,
        in_keys=["embed", "recurrent_state", "is_init"],
        out_keys=["embed_out", ("next", "recurrent_state")],
    )
    head = Mod(MLP(in_features=HIDDEN, out_features=N_ACT, num_cells=[]), in_keys=["embed_out"], out_keys=["logits"])
    policy = ProbabilisticActor(Seq(embed, rnn, head), in_keys=["logits"], out_keys=["action"],
                                distribution_class=torch.distributions.Categorical, return_log_prob=True)
    env = TransformedEnv(GymEnv("CartPole-v1"), InitTracker())
    env.append_transform(rnn.make_tensordict_primer())
    data = collect(policy, 200, env)
    assert data["is_init"][1:].any(), "the batch should cross episode ends"
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), sampler=SliceSampler(slice_len=6, traj_key=TRAJ),
                                batch_size=60)
    rb.extend(data)
    torch.manual_seed(0)
    sample = rb.sample().reshape(10, 6)
    if memory == "elmur":  # slices that start mid-episode, mid-segment: replay starts from the stored tokens
        assert ((sample["recurrent_state", "step"][:, 0] % 10) > 0).any()
    with torch.no_grad(), set_recurrent_mode(True):
        replayed = policy.get_dist(sample.copy()).log_prob(sample["action"])
    torch.testing.assert_close(replayed, sample["action_log_prob"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ recurrent state lifecycle (PPO)
@pytest.mark.parametrize("memory", ["gru", "elmur"])
def test_ppo_actor_and_critic_with_their_own_state_key(memory):
    torch.manual_seed(0)
    cls = gru_like(memory)

    def trunk(prefix: str) -> Seq:
        return Seq(
            Mod(nn.Linear(N_OBS, HIDDEN), in_keys=["observation"], out_keys=[f"{prefix}_embed"]),
            cls(input_size=HIDDEN, hidden_size=HIDDEN, in_keys=[f"{prefix}_embed", f"{prefix}_rs", "is_init"],
                out_keys=[f"{prefix}_features", ("next", f"{prefix}_rs")]),
        )

    actor = ProbabilisticActor(
        Seq(trunk("actor"), Mod(nn.Linear(HIDDEN, N_ACT), in_keys=["actor_features"], out_keys=["logits"])),
        in_keys=["logits"], out_keys=["action"], distribution_class=torch.distributions.Categorical,
        return_log_prob=True)
    critic = Seq(trunk("critic"), ValueOperator(nn.Linear(HIDDEN, 1), in_keys=["critic_features"]))
    collector = Collector(GymEnv("CartPole-v1"), actor, frames_per_batch=64, total_frames=64,
                          auto_register_policy_transforms=True)
    collector.set_seed(0)
    try:
        batch = next(iter(collector)).clone()
    finally:
        collector.shutdown()
    assert ("actor_rs",) in [k if isinstance(k, tuple) else (k,) for k in batch.keys()]
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=critic, deactivate_vmap=True)
    loss = ClipPPOLoss(actor, critic)
    rows = batch.reshape(4, 16)  # [B, T] rows; each restarts from its stored state
    with torch.no_grad(), set_recurrent_mode(True):
        rows = gae(rows)
        log_prob = actor.get_dist(rows.copy()).log_prob(rows["action"])
    torch.testing.assert_close(log_prob, rows["action_log_prob"], rtol=0, atol=1e-5)
    losses = loss(rows)
    (losses["loss_objective"] + losses["loss_critic"]).backward()
    for net in (actor, critic):  # the embedding before the memory is trained through it
        first_linear = next(m for m in net.modules() if isinstance(m, nn.Linear))
        assert first_linear.weight.grad.abs().sum() > 0


def test_rnn_only_keywords_are_refused_with_what_elmur_does():
    for keyword, value in [("recurrent_backend", "pad"), ("python_based", True), ("bidirectional", True),
                           ("batch_first", False), ("proj_size", 4), ("bias", False)]:
        with pytest.raises(ValueError, match=f"ELMURModule: {keyword}={value!r} is a GRUModule/LSTMModule option"):
            ELMURModule(input_size=HIDDEN, hidden_size=HIDDEN, in_key="x", out_key="y", **{keyword: value})
    m = ELMURModule(input_size=HIDDEN, hidden_size=HIDDEN, in_key="x", out_key="y",
                    batch_first=True, bidirectional=False, bias=True, dropout=0.1)  # true of ELMUR: accepted
    assert m.config.dropout == 0.1


@pytest.mark.parametrize("keys", [dict(in_keys="abcde", out_key="y"), dict(in_key="x", out_keys="abcde")])
def test_string_key_lists_are_refused_like_gru(keys):
    with pytest.raises(TypeError):
        GRUModule(input_size=3, hidden_size=4, **keys)
    with pytest.raises(TypeError, match="must be a list of keys, received str 'abcde'"):
        ELMURModule(input_size=3, hidden_size=4, **keys)


@pytest.mark.parametrize("width", [1, 3, 5, 7])
def test_any_width_gru_accepts(width):
    """TorchRL's own collector tests use hidden_size=1; odd widths used to crash at the first call."""
    m = ELMURModule(input_size=N_OBS, hidden_size=width, in_key="observation", out_key="embed")
    policy = ProbabilisticActor(Seq(m, Mod(nn.Linear(width, N_ACT), in_keys=["embed"], out_keys=["logits"])),
                                in_keys=["logits"], out_keys=["action"], distribution_class=torch.distributions.Categorical)
    data = collect(policy, 30)
    with torch.no_grad(), set_recurrent_mode(True):
        replayed = m(data.exclude("embed", "next").unsqueeze(0))
    torch.testing.assert_close(replayed["embed"][0], data["embed"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ sequence tutorial (LSTM's two keys)
@pytest.mark.parametrize("memory", ["lstm", "elmur"])
def test_two_state_keys_with_burn_in(memory):
    torch.manual_seed(0)
    rnn = lstm_like(memory)(
        input_size=N_OBS,
        hidden_size=HIDDEN,
        in_keys=["observation", "rs_h", "rs_c"],
        out_keys=["features", ("next", "rs_h"), ("next", "rs_c")],
    )
    policy = ProbabilisticActor(Seq(rnn, Mod(nn.Linear(HIDDEN, N_ACT), in_keys=["features"], out_keys=["logits"])),
                                in_keys=["logits"], out_keys=["action"],
                                distribution_class=torch.distributions.Categorical, return_log_prob=True)
    data = collect(policy, 150)
    assert data["next", "rs_h"].shape[0] == 150
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), sampler=SliceSampler(slice_len=6, traj_key=TRAJ),
                                batch_size=48)
    rb.extend(data)
    burn_in = BurnInTransform(modules=[rnn], burn_in=2)
    torch.manual_seed(0)
    with torch.no_grad(), set_recurrent_mode(True):
        sample = burn_in(rb.sample().reshape(8, 6))  # [8, 4]: the state at t=0 comes from burning in the 2 steps before
        assert sample.shape == (8, 4)
        replayed = policy.get_dist(sample.copy()).log_prob(sample["action"])
    torch.testing.assert_close(replayed, sample["action_log_prob"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ recurrent DQN
def make_qnet(memory: str) -> Seq:
    torch.manual_seed(0)
    feature = Mod(MLP(out_features=HIDDEN, num_cells=[32]), in_keys=["observation"], out_keys=["embed"])
    rnn = {"lstm": LSTMModule, "gru": GRUModule, "elmur": ELMURModule}[memory](
        input_size=HIDDEN,
        hidden_size=HIDDEN,
        in_key="embed",
        out_key="embed",
    )
    mlp = Mod(MLP(out_features=N_ACT, num_cells=[32]), in_keys=["embed"], out_keys=["action_value"])
    return Seq(feature, rnn, mlp, QValueModule(spec=GymEnv("CartPole-v1").action_spec))


@pytest.mark.parametrize("memory", ["lstm", "elmur"])
def test_dqn_next_values_match_collection_time_q(memory, tmp_path):
    qnet = make_qnet(memory)
    rnn = qnet[1]
    env = TransformedEnv(GymEnv("CartPole-v1"), StepCounter())
    env.append_transform(InitTracker())
    env.append_transform(rnn.make_tensordict_primer())
    data = collect(qnet, 240, env)
    rb = TensorDictReplayBuffer(storage=LazyMemmapStorage(1000, scratch_dir=tmp_path),
                                sampler=SliceSampler(slice_len=8, traj_key=TRAJ), batch_size=64)
    rb.extend(data)
    torch.manual_seed(1)
    sample = rb.sample()  # flat [8 slices x 8], as the DQN tutorial samples
    loss = DQNLoss(qnet, action_space=env.action_spec, delay_value=True)
    estimator = loss.value_estimator

    def next_q(batch):
        with torch.no_grad(), set_recurrent_mode(True):
            return estimator._next_value(batch.clone(), loss.target_value_network_params, {}).squeeze(-1)

    # the collection-time Q of the next step, where the next step is in storage (same trajectory, not done)
    index = sample["index"].reshape(-1)  # storage positions (stored as [N, 1])
    stored = rb.storage.get(torch.clamp(index + 1, max=len(rb) - 1))
    ok = (~sample["next", "done"].squeeze(-1)) & (index + 1 < len(rb)) & (stored[TRAJ] == sample[TRAJ])
    assert ok.sum() > 40
    expected = stored["action_value"].max(-1).values
    fixed = next_q(mark_next_slice_starts(sample.clone()))
    torch.testing.assert_close(fixed[ok], expected[ok], rtol=0, atol=1e-5)
    assert (next_q(sample)[ok] - expected[ok]).abs().max() > 1e-3  # TorchRL's step_mdp alone runs across slices
    # the recipe in a training loop: the loss trains on the marked batch
    batch = mark_next_slice_starts(rb.sample())
    assert (batch["next", "is_init"] >= batch["is_init"]).all()
    loss(batch)["loss"].backward()
