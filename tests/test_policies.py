"""make_bc_actor (encoder -> memory -> head) and the two sequence BC losses, on POPGym data."""
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import step_mdp
from torchrl.modules import set_recurrent_mode

pytest.importorskip("popgym")

from torchrl_elmur import ELMURConfig  # noqa: E402
from torchrl_elmur.data import make_offline_replay_buffer  # noqa: E402
from torchrl_elmur.data.popgym_dataset import play_episodes  # noqa: E402
from torchrl_elmur.envs.popgym_oracles import oracle_action  # noqa: E402
from torchrl_elmur.objectives import SequenceCrossEntropyLoss, SequenceMSELoss  # noqa: E402
from torchrl_elmur.training.bc import carry_state, state_key_pairs  # noqa: E402
from torchrl_elmur.training.policies import make_bc_actor  # noqa: E402

CONFIG = ELMURConfig.popgym(input_size=16, d_model=16, num_layers=1, num_heads=2, segment_len=5)


@pytest.mark.parametrize("memory", ["elmur", "gru", "lstm", "mlp"])
def test_discrete_actor_trains_with_cross_entropy(memory):
    data = play_episodes("RepeatPreviousEasy", 4, progress=False)
    actor = make_bc_actor(memory, 4, num_actions=4, width=16, config=CONFIG if memory == "elmur" else None)
    batch = make_offline_replay_buffer(data, 2, 20, seed=0).sample().reshape(2, 20)
    losses = SequenceCrossEntropyLoss(actor)(batch)
    losses["loss_bc"].backward()
    assert 0.0 <= losses["accuracy"] <= 1.0
    linears = [m for m in actor.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].weight.grad.abs().sum() > 0 and linears[-1].weight.grad.abs().sum() > 0  # encoder, head


def test_continuous_actor_and_mse():
    data = play_episodes("PositionOnlyPendulumEasy", 1, behaviour=oracle_action, progress=False)
    actor = make_bc_actor("gru", 2, action_dim=1, action_bound=2.0, width=16)
    batch = make_offline_replay_buffer(data, 2, 10, seed=0).sample().reshape(2, 10)
    losses = SequenceMSELoss(actor)(batch)
    losses["loss_bc"].backward()
    with torch.no_grad(), set_recurrent_mode(True):
        out = actor(batch.copy())
    assert out["action"].shape == batch["action"].shape and out["action"].abs().max() <= 2.0
    torch.testing.assert_close(losses["mae"], (out["action"] - batch["action"]).abs().mean())
    per_step = (out["action"] - batch["action"]).pow(2).mean(-1)  # [2, 10]
    w = torch.arange(10.0)  # step weights: the first step ignored, later ones more
    weighted = SequenceMSELoss(actor, step_weights=w)(batch)["loss_bc"]
    torch.testing.assert_close(weighted, (per_step * w).sum(-1).mean() / w.sum())
    with pytest.raises(ValueError, match="step_weights has 9 steps, the batch's 'action' \\[2, 10, 1\\]"):
        SequenceMSELoss(actor, step_weights=torch.ones(9))(batch)
    with pytest.raises(ValueError, match="step_weights must be a 1-D tensor"):
        SequenceMSELoss(actor, step_weights=torch.zeros(10))


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of num_actions"):
        make_bc_actor("gru", 3, width=4)
    with pytest.raises(ValueError, match="memory='rnn' is invalid"):
        make_bc_actor("rnn", 3, num_actions=2, width=4)
    with pytest.raises(ValueError, match="needs an ELMURConfig with input_size 4"):
        make_bc_actor("elmur", 3, num_actions=2, width=4, config=CONFIG)


def test_chunks_carrying_the_state_equal_streaming_the_episode():
    """The long-episode scheme (train_bc chunk_len=K: consecutive chunks, the state carried)
    sees what a streamed policy sees: chunk by chunk in recurrent mode == step by step, over a
    RepeatFirstHard episode (831 steps) cut into chunks of 35 that do not align with ELMUR's segments."""
    data = play_episodes("RepeatFirstHard", 1, progress=False)[:210]
    actor = make_bc_actor("elmur", 4, num_actions=4, width=16, config=CONFIG.replace(segment_len=8)).eval()
    row = data.unsqueeze(0)  # [1, 210]
    pairs = state_key_pairs(actor)
    with torch.no_grad(), set_recurrent_mode(True):
        previous, chunks = None, []
        for c in range(6):
            chunk = row[:, 35 * c:35 * (c + 1)]
            if previous is not None:
                chunk = carry_state(chunk, previous, pairs)
            previous = actor(chunk.copy())
            chunks.append(previous["logits"])
    td, streamed = TensorDict({}, []), []
    with torch.no_grad():
        for t in range(210):
            td["observation"], td["is_init"] = data["observation"][t], data["is_init"][t]
            td = actor(td)
            streamed.append(td["logits"])
            td = step_mdp(td, keep_other=True)
    torch.testing.assert_close(torch.cat(chunks, 1)[0], torch.stack(streamed), rtol=0, atol=1e-4)
