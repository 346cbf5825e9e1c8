"""Policies saved with the call that rebuilds them: save_policy / load_policy / load_into."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode

from torchrl_elmur import ELMURConfig
from torchrl_elmur.training import checkpoint
from torchrl_elmur.training.checkpoint import load_into, load_policy, read_policy_file, save_policy
from torchrl_elmur.training.policies import make_actor_critic, make_bc_actor

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
# the released options: a mixture of experts (a nested config) and dropout (eval mode below)
CONFIG = ELMURConfig.tmaze_released(input_size=16, d_model=16, segment_len=3, memory_slots=2)


def rows(obs_size: int = 4, batch: int = 3, time: int = 7) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    is_init = torch.zeros(batch, time, 1, dtype=torch.bool)
    is_init[:, 0] = True
    return TensorDict({"observation": torch.randn(batch, time, obs_size, generator=g), "is_init": is_init}, [batch, time])


def test_a_fresh_process_rebuilds_the_policy_and_acts_the_same(tmp_path, one_torch_thread):
    """Both processes on one torch thread: with two, the parent (threads set by earlier tests) and the child
    may sum in another order, and the comparison is to the bit."""
    torch.manual_seed(0)
    actor = make_bc_actor("elmur", 4, num_actions=3, width=16, config=CONFIG).eval()
    actor_critic = make_actor_critic("elmur", 4, 3, width=16, config=CONFIG.replace(dropout=0.0, attn_dropout=0.0,
                                                                                    memory_dropout=0.0), shared_trunk=True)
    save_policy(tmp_path / "bc.pt", actor)
    save_policy(tmp_path / "ppo.pt", *actor_critic)
    data = rows()
    torch.save(data, tmp_path / "rows.pt")
    with torch.no_grad(), set_recurrent_mode(True):
        expected = actor(data.clone())["logits"]
        value = actor_critic[1](data.clone())["state_value"]
    script = f"""
import torch
from torchrl.modules import set_recurrent_mode
from torchrl_elmur.training.checkpoint import load_policy
torch.set_num_threads(1)
actor = load_policy({str(tmp_path / 'bc.pt')!r}).eval()
_, critic = load_policy({str(tmp_path / 'ppo.pt')!r})
data = torch.load({str(tmp_path / 'rows.pt')!r}, weights_only=False)
with torch.no_grad(), set_recurrent_mode(True):
    torch.save((actor(data.clone())["logits"], critic(data.clone())["state_value"]), {str(tmp_path / 'out.pt')!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logits, state_value = torch.load(tmp_path / "out.pt")
    assert torch.equal(logits, expected) and torch.equal(state_value, value)


def test_load_into_names_every_argument_that_differs(tmp_path):
    save_policy(tmp_path / "a.pt", make_bc_actor("elmur", 4, num_actions=3, width=16, config=CONFIG))
    other = make_bc_actor("elmur", 4, num_actions=3, width=16, config=CONFIG.replace(memory_slots=3, lru_blend=0.5))
    with pytest.raises(ValueError, match=r"built otherwise than these modules: config\.lru_blend: file 0\.79, module 0\.5; "
                                         r"config\.memory_slots: file 2, module 3\."):
        load_into(tmp_path / "a.pt", other)
    with pytest.raises(ValueError, match=r"args\.0: file 'elmur', module 'gru'.*config: file \{.*\}, module None"):
        load_into(tmp_path / "a.pt", make_bc_actor("gru", 4, num_actions=3, width=16))
    same = make_bc_actor("elmur", 4, num_actions=3, width=16, config=CONFIG)
    assert load_into(tmp_path / "a.pt", same) == {}


def test_files_that_do_not_match_the_code(tmp_path):
    actor = make_bc_actor("gru", 4, num_actions=3, width=8)
    path = save_policy(tmp_path / "gru.pt", actor, extra={"step": 3})
    payload = torch.load(path, weights_only=False)
    assert read_policy_file(path)["extra"] == {"step": 3} and payload["state_dicts"][0].keys() == actor.state_dict().keys()

    torch.save({**payload, "version": 99}, tmp_path / "v99.pt")
    with pytest.raises(ValueError, match=r"v99.pt: format version 99, this code reads version 1\."):
        load_policy(tmp_path / "v99.pt")
    state = dict(payload["state_dicts"][0])
    dropped = next(k for k in state if k.endswith("weight_hh_l0"))
    del state[dropped]
    torch.save({**payload, "state_dicts": [state]}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=rf"the weights do not match the module: missing \['{dropped}'\], unexpected \[\]"):
        load_policy(tmp_path / "missing.pt")
    torch.save(actor.state_dict(), tmp_path / "plain.pt")  # what TorchRL users keep: still loads their way
    with pytest.raises(ValueError, match=r"received a plain state_dict; load a state_dict into modules you build"):
        load_policy(tmp_path / "plain.pt")
    actor.load_state_dict(torch.load(tmp_path / "plain.pt"))
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut.pt is not readable .*truncated, corrupt or not a torch file"):
        load_policy(tmp_path / "cut.pt")
    from torchrl_elmur.modules import PixelEncoder

    pixels = make_bc_actor("gru", 0, action_dim=2, width=8, encoder=PixelEncoder(6, 36, width=8), in_keys=("pixels",))
    with pytest.raises(ValueError, match=r"not built by a package factory .*torch.save\(module.state_dict\(\), path\)"):
        save_policy(tmp_path / "pixels.pt", pixels)
    critic = make_actor_critic("gru", 4, 3, width=8)[1]
    with pytest.raises(ValueError, match=r"give every output of make_actor_critic in its order \(parts \[1\]\)"):
        save_policy(tmp_path / "critic.pt", critic)


def test_an_interrupted_write_leaves_the_previous_file(tmp_path, monkeypatch):
    actor = make_bc_actor("gru", 4, num_actions=3, width=8)
    path = save_policy(tmp_path / "p.pt", actor)
    before = path.read_bytes()

    def dies(obj, f):  # half a file, then the process "dies"
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", dies)
    with torch.no_grad():
        next(actor.parameters()).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_policy(path, actor)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["p.pt"]
