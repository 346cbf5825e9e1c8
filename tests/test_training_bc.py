"""train_bc: the two update schedules, state carried between segment chunks, errors."""
import pytest
import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.modules import GRUModule, set_recurrent_mode

from torchrl_elmur import ELMURConfig, ELMURModule
from torchrl_elmur.data import make_offline_replay_buffer, make_tmaze_dataset
from torchrl_elmur.objectives import SequenceCrossEntropyLoss
from torchrl_elmur.training import train_bc
from torchrl_elmur.training.bc import carry_state, state_key_pairs


def make_actor(memory: str) -> TensorDictSequential:
    torch.manual_seed(0)
    keys = dict(in_key="embed", out_key="memory")
    module = (ELMURModule(config=ELMURConfig(d_model=16, num_heads=2, segment_len=4, input_size=8), **keys)
              if memory == "elmur" else GRUModule(input_size=8, hidden_size=16, **keys))
    return TensorDictSequential(
        TensorDictModule(nn.Linear(4, 8), ["observation"], ["embed"]), module,
        TensorDictModule(nn.Linear(16, 4), ["memory"], ["logits"]),
    )


@pytest.fixture(scope="module")
def data():
    return make_tmaze_dataset(40, max_corridor=10, seed=0)


@pytest.mark.parametrize("memory", ["elmur", "gru"])
def test_carried_state_continues_the_window_exactly(data, memory):
    """Chunk by chunk with the state carried == the whole window at once (eval mode)."""
    actor = make_actor(memory).eval()
    batch = make_offline_replay_buffer(data, 3, 12, seed=1).sample().reshape(3, 12)
    assert batch["is_init"][:, 1:].any()  # rows run into the next episode: fresh starts inside chunks
    pairs = state_key_pairs(actor)
    assert len(pairs) == 1  # one state key: a TensorDict (ELMUR) or a tensor (GRU)
    with torch.no_grad(), set_recurrent_mode(True):
        whole = actor(batch.copy())["logits"]
        previous, parts = None, []
        for c in range(3):
            chunk = batch[:, 4 * c:4 * c + 4]
            if previous is not None:
                chunk = carry_state(chunk, previous, pairs)
            previous = actor(chunk.copy())
            parts.append(previous["logits"])
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk_len, optimizer_steps", [(None, 2), (12, 2), (4, 6)])
def test_updates_per_sample(data, chunk_len, optimizer_steps):
    actor = make_actor("elmur")
    buffer = make_offline_replay_buffer(data, 2, 12, seed=0)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=1e-3)
    calls = []
    optimizer.register_step_post_hook(lambda *a: calls.append(1))
    probes = []
    history = train_bc(actor, SequenceCrossEntropyLoss(actor), buffer, optimizer, steps=2, batch=2, seq_len=12,
                       grad_clip=1.0, chunk_len=chunk_len, progress=False,
                       probe=lambda a: probes.append(a.training) or {"x": 1.0}, probe_every=1)
    assert len(calls) == optimizer_steps
    assert [p["step"] for p in history.probes] == [1, 2] and history.first_time("x") == history.probes[0]["seconds"]
    assert history.train_seconds > 0 and actor.training


def test_errs(data):
    actor = make_actor("elmur")
    buffer = make_offline_replay_buffer(data, 2, 12)
    args = (actor, SequenceCrossEntropyLoss(actor), buffer, torch.optim.AdamW(actor.parameters()))
    for bad in (5, 0, -4, True, 4.0):
        with pytest.raises(ValueError, match=rf"chunk_len must be a positive divisor of seq_len=12 \(or None: the whole window\), received {bad!r}"):
            train_bc(*args, steps=1, batch=2, seq_len=12, grad_clip=1.0, chunk_len=bad)


def test_select_keeps_the_best_probed_weights(data):
    actor = make_actor("elmur")
    buffer = make_offline_replay_buffer(data, 2, 12, seed=0)
    scores, snapshots = iter([0.2, 0.9, 0.9, 0.5]), []

    def probe(a):
        snapshots.append({k: v.clone() for k, v in a.state_dict().items()})
        return {"success": next(scores)}

    history = train_bc(actor, SequenceCrossEntropyLoss(actor), buffer, torch.optim.AdamW(actor.parameters(), lr=1e-2),
                       steps=4, batch=2, seq_len=12, grad_clip=1.0, progress=False, probe=probe, probe_every=1,
                       select="success")
    assert history.selected_step == 3  # the latest of the tied best
    for k, v in actor.state_dict().items():
        torch.testing.assert_close(v, snapshots[2][k], rtol=0, atol=0)
    assert not torch.equal(snapshots[2]["module.0.module.weight"], snapshots[3]["module.0.module.weight"])
    with pytest.raises(ValueError, match="select='success' needs a probe"):
        train_bc(actor, SequenceCrossEntropyLoss(actor), buffer, torch.optim.AdamW(actor.parameters()), steps=1,
                 batch=2, seq_len=12, grad_clip=1.0, select="success")


def test_bf16_autocast_trains_in_float32_weights(data):
    """autocast_dtype=bfloat16: the forward runs in bf16 (the loss differs from float32's, within
    bf16 rounding), the weights and their gradients stay float32 and the weights move."""
    buffer = make_offline_replay_buffer(data, 4, 12, seed=0)
    losses = {}
    for dtype in (None, torch.bfloat16):
        actor = make_actor("elmur")
        before = [p.detach().clone() for p in actor.parameters()]
        seen = []
        loss = SequenceCrossEntropyLoss(actor)
        loss.register_forward_hook(lambda mod, inp, out: seen.append(out["loss_bc"].detach()))
        train_bc(actor, loss, buffer, torch.optim.SGD(actor.parameters(), lr=0.1), steps=1, batch=4, seq_len=12,
                 grad_clip=1.0, progress=False, autocast_dtype=dtype)
        losses[dtype] = seen[0]
        assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in actor.parameters())
        assert any(not torch.equal(a, p) for a, p in zip(before, actor.parameters()))
    assert losses[torch.bfloat16] != losses[None]  # bf16 really ran
    assert abs(losses[torch.bfloat16] - losses[None]) < 0.05 * losses[None]
