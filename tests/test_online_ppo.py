"""Online recurrent PPO: the collector's stored states replay exactly, with and without RowStartStates."""
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from torchrl.collectors import Collector
from torchrl.modules import set_recurrent_mode
from torchrl.modules.utils import get_primers_from_module
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

pytest.importorskip("popgym")

from torchrl_elmur import ELMURConfig  # noqa: E402
from torchrl_elmur.data.row_states import RowStartStates, recurrent_state_keys  # noqa: E402
from torchrl_elmur.envs import make_popgym_env  # noqa: E402
from torchrl_elmur.training.policies import make_actor_critic  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tutorials"))
import online_ppo  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = ELMURConfig.popgym(input_size=16, d_model=16, num_layers=2, num_heads=2, segment_len=5, memory_slots=2,
                            detach_memory=False)
T = 64  # RepeatFirstEasy episodes last 51 steps: every row holds an episode end


def collect_rows(memory: str, n_envs: int = 3, batches: int = 2, layout: str = "tokens"):
    """Two consecutive collector batches as rows [n_envs, T] (the second starts mid-episode)."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(memory, 4, 4, width=16, config=CONFIG if memory == "elmur" else None,
                                      state_layout=layout)
    policy = TensorDictSequential(actor, critic)
    env = make_popgym_env("RepeatFirstEasy", num_envs=n_envs)
    primers = get_primers_from_module(policy)
    if primers is not None:
        env.append_transform(primers)
    collector = Collector(env, policy, frames_per_batch=n_envs * T, total_frames=batches * n_envs * T)
    collector.set_seed(0)
    try:
        out = [b.reshape(-1, T).exclude("state_value").clone() for b in collector]
    finally:
        collector.shutdown()
    return actor, critic, out


def replayed_log_prob(actor, rows):
    with torch.no_grad(), set_recurrent_mode(True):
        return actor.get_dist(rows.copy()).log_prob(rows["action"])


@pytest.mark.parametrize("memory, layout", [("elmur", "tokens"), ("elmur", "cache"), ("gru", None), ("lstm", None)])
def test_row_start_states_replay_the_collection_exactly(memory, layout):
    actor, critic, batches = collect_rows(memory, layout=layout or "tokens")
    keys = recurrent_state_keys(actor, critic)
    assert keys == ({"lstm": ["actor_rs_h", "actor_rs_c", "critic_rs_h", "critic_rs_c"]}.get(memory, ["actor_rs", "critic_rs"]))
    rows = batches[1]
    assert rows["is_init"][:, 1:].any() and not rows["is_init"][:, 0].all(), "episode ends inside rows, rows mid-episode"
    stored = RowStartStates(rows, keys)
    assert stored.bytes() < rows.bytes()
    for view in (rows, stored[:], stored[torch.tensor([2, 0])]):  # every state / row-starts only / a minibatch
        ids = torch.tensor([0, 1, 2]) if view.shape[0] == 3 else torch.tensor([2, 0])
        torch.testing.assert_close(replayed_log_prob(actor, view), rows["action_log_prob"][ids], rtol=0, atol=1e-5)
    with torch.no_grad(), set_recurrent_mode(True):  # GAE on the compact rows equals GAE on the full batch?
        full_values = critic(rows.copy())["state_value"]
        compact_values = critic(stored[:])["state_value"]
    torch.testing.assert_close(compact_values, full_values, rtol=0, atol=1e-6)


def test_ppo_loss_on_row_starts_has_ratio_one_and_trains_the_memory():
    actor, critic, batches = collect_rows("elmur", batches=1)
    rows = batches[0]
    with torch.no_grad(), set_recurrent_mode(True):
        GAE(gamma=0.99, lmbda=0.95, value_network=critic, deactivate_vmap=True)(rows)
    stored = RowStartStates(rows, recurrent_state_keys(actor, critic))
    loss = ClipPPOLoss(actor, critic, entropy_coeff=0.0, normalize_advantage=False)
    out = loss(stored[:])
    # at ratio 1 the clipped objective is -mean(advantage)
    torch.testing.assert_close(out["loss_objective"], -rows["advantage"].mean(), rtol=0, atol=1e-5)
    out["loss_objective"].backward()
    write = [p for n, p in actor.named_parameters() if "write" in n or "mem" in n]
    assert write and any(float(p.grad.abs().sum()) > 0 for p in write if p.grad is not None)


def test_row_start_states_errors():
    rows = TensorDict({"is_init": torch.zeros(2, 4, 1, dtype=torch.bool), "rs": torch.ones(2, 4, 3)}, [2, 4])
    with pytest.raises(KeyError, match=r"state keys \['h'\] not found"):
        RowStartStates(rows, ["h"])
    with pytest.raises(ValueError, match=r"batch of rows \[N, T\], received batch size \[8\]"):
        RowStartStates(rows.reshape(-1), ["rs"])
    rows["is_init"][0, 2] = True  # an episode start inside a row whose stored state is not the fresh one
    with pytest.raises(ValueError, match="'rs' is not all zeros where is_init is True"):
        RowStartStates(rows, ["rs"])
    rows["rs"][0, 2] = 0
    stored = RowStartStates(rows, ["rs"])
    rebuilt = stored[:]
    assert rebuilt["rs"][:, 0].eq(1).all() and rebuilt["rs"][:, 1:].eq(0).all()
    with pytest.raises(IndexError, match="must select rows"):
        stored[0]


@pytest.mark.parametrize("policy, collector, shared", [("elmur", "multisync", False), ("lstm", "multisync", False),
                                                       ("elmur", "distributed", False), ("elmur", "multisync", True)])
def test_tutorial_checks_the_replay_at_every_update(policy, collector, shared, tmp_path):
    """Each update of the tutorial's loop replays its whole batch before the first step (online_ppo.train
    raises above 1e-4): two updates, the second from states carried over from the first batch and
    collected by worker processes with the weights of the first update (pushed through shared memory:
    a per-process weight cache, keyed on version counters that such writes do not move, once made this
    replay differ by 6e-4 and growing)."""
    args = online_ppo.Args(policy=policy, frames=2 * 4 * T, num_workers=2, envs_per_worker=2, rollout=T, epochs=1,
                           minibatch_rows=2, width=16, segment_len=5, memory_slots=2, eval_episodes=4,
                           wandb="disabled", out=str(tmp_path), progress=False, collector=collector,
                           shared_trunk=shared)
    result = online_ppo.train(policy, 0, args, progress=False)
    assert len(result["curve"]) == 2 and result["max_replay_error"] < 1e-4  # float32 log-probs
    first = result["curve"][0]
    # states at row starts only: most of ELMUR's batch was state; an LSTM's (width 16) was not
    assert first["stored_bytes"] < first["batch_bytes"] / (4 if policy == "elmur" else 1)
    assert -1.0 <= result["eval_return"] <= 1.0
