"""The faster paths equal the eager reference: the one-query step attention and memory read,
the fused (SDPA) sequence attention, the compiled CPU step, in-place module steps in evaluation
loops, and bf16 autocast within a stated tolerance."""
import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import step_mdp

from torchrl_elmur import ELMURConfig, ELMURModule, inplace_steps, window_recompute
from torchrl_elmur.core.attention import RelativeSelfAttention, TimeGapCrossAttention, relative_geometry, split_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def naive_attention(att: RelativeSelfAttention, q, k, v, u, v_bias, pos_q, pos_k, valid):
    """score(i, j) = [(q_i + u) . k_j + (q_i + v) . W_r e(pos_i - pos_j)] / sqrt(d) over visible
    keys (pos_j <= pos_i and valid), written out one (row, head, query, key) at a time; e is the
    layer's sinusoid table (``sinusoid_embedding``, stored in float32)."""
    B, n, D = q.shape
    H, S = att.num_heads, k.shape[2]
    d = D // H
    qh = q.view(B, n, H, d)
    out = torch.zeros(B, n, H, d, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(n):
                scores, values = [], []
                for j in range(S):
                    delta = int(pos_q[i] - pos_k[j])
                    if delta < 0 or not valid[b, j]:
                        continue
                    r = att.r_proj(att.distance_embedding[delta].to(q.dtype)).view(H, d)[h]
                    scores.append(((qh[b, i, h] + u[h]) @ k[b, h, j] + (qh[b, i, h] + v_bias[h]) @ r) / math.sqrt(d))
                    values.append(v[b, h, j])
                probs = torch.softmax(torch.stack(scores), 0)
                out[b, i, h] = (probs[:, None] * torch.stack(values)).sum(0)
    return att.out(out.reshape(B, n, D))


class TestAttention:
    def setup_method(self):
        torch.manual_seed(0)
        self.att = RelativeSelfAttention(8, 2, 4, 0.0).double().eval()
        self.u, self.v = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)

    def test_fused_sequence_attention_equals_the_formula(self):
        """attend (SDPA with the position term as an additive mask) on a causal segment."""
        q = torch.randn(2, 4, 8, dtype=torch.float64)
        k, v = (split_heads(torch.randn(2, 4, 8, dtype=torch.float64), 2) for _ in range(2))
        pos = torch.arange(4)
        got = self.att.attend(q, k, v, relative_geometry(pos, pos, None, 4), self.u, self.v)
        want = naive_attention(self.att, q, k, v, self.u, self.v, pos, pos, torch.ones(2, 4, dtype=torch.bool))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)

    def test_one_query_step_attention_equals_the_formula(self):
        """attend_one: row 0 at slot 2 (two earlier tokens), row 1 at slot 0 (none): the cache's
        later slots hold garbage that must not be read."""
        p = torch.tensor([2, 0])
        cache_k, cache_v = torch.randn(2, 2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 4, 4, dtype=torch.float64)
        q, k, v = (torch.randn(2, 8, dtype=torch.float64) for _ in range(3))
        slots = torch.arange(4)
        got = self.att.attend_one(q, k, v, cache_k, cache_v, (p[:, None] - slots).clamp(min=0),
                                  (slots >= p[:, None]).unsqueeze(1), self.u, self.v)
        for b in range(2):  # the cache's earlier slots, then the token itself at slot p
            keys = torch.cat([cache_k[b:b + 1, :, :p[b]], k[b].view(1, 2, 1, 4)], 2)
            values = torch.cat([cache_v[b:b + 1, :, :p[b]], v[b].view(1, 2, 1, 4)], 2)
            n = int(p[b]) + 1
            want = naive_attention(self.att, q[b:b + 1, None], keys, values, self.u, self.v, torch.tensor([p[b]]),
                                   torch.arange(n), torch.ones(1, n, dtype=torch.bool))
            torch.testing.assert_close(got[b], want[0, 0], rtol=0, atol=1e-12)


def test_one_query_memory_read_equals_the_formula_and_the_fused_path():
    """TimeGapCrossAttention with one query per row (the step's memory read, no attention kernel):
    softmax_j(q_h . k_hj / sqrt(d) + table[clip(gap_j) + G - 1, h]) v_hj, written out per row and
    head; and the same as that query's row of a two-query call (the fused SDPA path)."""
    torch.manual_seed(0)
    att = TimeGapCrossAttention(8, 2, 0.0, out_bias=True).double().eval()
    table = torch.randn(5, 2, dtype=torch.float64)  # G = 3: gaps clipped to [-2, 2]
    queries, keys = torch.randn(2, 2, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    gap = torch.tensor([[[0, 1, 7]], [[-5, 2, 1]]]).expand(2, 2, 3)  # [B, n, S]; 7 and -5 are clipped
    got = att(queries[:, :1], keys, gap[:, :1], table)  # [B, 1, D]
    out = torch.zeros(2, 2, 4, dtype=torch.float64)
    for b in range(2):
        k, v = att.kv(keys[b]).chunk(2, -1)
        q = att.q(queries[b, 0])
        for h in range(2):
            hs = slice(4 * h, 4 * h + 4)
            scores = torch.stack([q[hs] @ k[j, hs] / 2.0 + table[int(gap[b, 0, j].clamp(-2, 2)) + 2, h] for j in range(3)])
            out[b, h] = (torch.softmax(scores, 0)[:, None] * v[:, hs]).sum(0)
    torch.testing.assert_close(got, att.out(out.reshape(2, 1, 8)), rtol=0, atol=1e-12)
    torch.testing.assert_close(got, att(queries, keys, gap, table)[:, :1], rtol=0, atol=1e-12)
    folded = att.fold_keys(att.kv(keys))  # the keys folded into the projections: the same read
    torch.testing.assert_close(att(queries[:, :1], None, gap[:, :1], table, folded), got, rtol=0, atol=1e-12)


def module_rollout(module, x, is_init, inplace):
    """Step ``module`` through ``x [T, B, F]`` as a rollout hands the state on; returns the
    outputs and the states after every step (cloned: in place, the tensors are reused)."""
    td = TensorDict({"x": x[0], "is_init": is_init[0]}, [x.shape[1]])
    ys, states = [], []
    with torch.no_grad(), (inplace_steps(module) if inplace else torch.no_grad()):
        for t in range(x.shape[0]):
            td["x"], td["is_init"] = x[t], is_init[t]
            td = module(td)
            ys.append(td["y"].clone())
            states.append(td["next", "recurrent_state"].clone())
            td = step_mdp(td, keep_other=True)
    return torch.stack(ys), states


def test_inplace_module_steps_equal_new_states_bitwise():
    """In-place steps (evaluation loops) give the very same outputs and states as new states
    per step, through resets and with rows at different phases."""
    torch.manual_seed(0)
    m = ELMURModule(5, 8, num_heads=2, segment_len=3, memory_slots=2, in_key="x", out_key="y",
                    state_layout="cache", detach_memory=False).eval()
    T, B = 14, 3
    x = torch.randn(T, B, 5)
    is_init = torch.zeros(T, B, 1, dtype=torch.bool)
    is_init[0] = True
    is_init[4, 1] = is_init[9, 2] = True  # resets put rows at different phases
    y_new, s_new = module_rollout(m, x, is_init, inplace=False)
    y_in, s_in = module_rollout(m, x, is_init, inplace=True)
    assert torch.equal(y_in, y_new)
    for a, b in zip(s_in, s_new):
        assert (a == b).all()
    assert not m._inplace_steps  # the context restores the flag


def test_inplace_module_steps_reuse_the_state_tensors():
    m = ELMURModule(5, 8, num_heads=2, segment_len=3, in_key="x", out_key="y", state_layout="cache").eval()
    td = TensorDict({"x": torch.randn(2, 5), "is_init": torch.zeros(2, 1, dtype=torch.bool),
                     "recurrent_state": m.make_tensordict_primer().primers["recurrent_state"].zero((2,))}, [2])
    cache = td["recurrent_state", "cache"]
    with torch.no_grad(), inplace_steps(m):
        out = m(td)
    assert out["next", "recurrent_state", "cache"].data_ptr() == cache.data_ptr()  # the same memory, updated
    assert cache.abs().sum() > 0
    with torch.no_grad():  # without the context: a new state
        assert m(td)["next", "recurrent_state", "cache"].data_ptr() != cache.data_ptr()


def test_compiled_cpu_step_equals_eager():
    """ELMURModule.compile_step() on a CPU ("default": token path compiled, commits eager): the
    same outputs and states as the eager step, with resets and different phases, and it sees
    weight updates made after compiling."""
    torch.manual_seed(0)
    m = ELMURModule(5, 8, num_heads=2, segment_len=3, memory_slots=2, in_key="x", out_key="y",
                    state_layout="cache").eval()
    T, B = 8, 3
    x = torch.randn(T, B, 5)
    is_init = torch.zeros(T, B, 1, dtype=torch.bool)
    is_init[0] = True
    is_init[3, 1] = True
    y_eager, s_eager = module_rollout(m, x, is_init, inplace=False)
    m.compile_step()
    assert m._compile_mode == "default"
    y_comp, s_comp = module_rollout(m, x, is_init, inplace=False)
    torch.testing.assert_close(y_comp, y_eager, rtol=0, atol=1e-5)
    for a, b in zip(s_comp, s_eager):
        torch.testing.assert_close(a["memory"], b["memory"], rtol=0, atol=1e-5)
        assert torch.equal(a["memory_time"], b["memory_time"]) and torch.equal(a["step"], b["step"])
    y_in, _ = module_rollout(m, x, is_init, inplace=True)  # the compiled step also steps in place
    torch.testing.assert_close(y_in, y_comp, rtol=0, atol=0)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.5)
    y_after, _ = module_rollout(m, x, is_init, inplace=False)
    m.compile_step(None)
    y_after_eager, _ = module_rollout(m, x, is_init, inplace=False)
    torch.testing.assert_close(y_after, y_after_eager, rtol=0, atol=1e-5)
    assert (y_after - y_comp).abs().max() > 1e-2  # the new weights were used


@pytest.mark.parametrize("preset", ["tmaze", "tmaze_released"])
def test_bf16_autocast_within_tolerance(preset):
    """Under torch.autocast(bfloat16) the sequence path's outputs stay within 3% of the float32
    outputs' scale (bf16 keeps 8 bits of mantissa), the state stays float32 (it can be stored and
    handed to a float32 call), and the gradients are finite."""
    torch.manual_seed(0)
    cfg = getattr(ELMURConfig, preset)(dropout=0.0, attn_dropout=0.0, memory_dropout=0.0, d_model=32, num_heads=2,
                                       input_size=32)
    from torchrl_elmur import ELMURBackbone
    net = ELMURBackbone(cfg)
    x = torch.randn(4, 25, 32)
    y, state = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf, state_bf = net(x)
    assert state_bf.memory.dtype == torch.float32 and y_bf.dtype == torch.float32
    assert (y_bf - y).abs().max() <= 0.03 * y.abs().max()
    assert torch.equal(state_bf.memory_time, state.memory_time)
    y2, _ = net(x[:, :5], state_bf)  # a bf16-made state continues in float32
    y_bf.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    assert torch.isfinite(y2).all()


def test_window_recompute_still_equals_the_step_path():
    """The reference (window recompute, now through the fused attention) against the one-query step."""
    torch.manual_seed(1)
    from torchrl_elmur import ELMURBackbone
    net = ELMURBackbone(ELMURConfig(d_model=16, num_heads=2, segment_len=4, memory_slots=2, input_size=5)).double().eval()
    x = torch.randn(3, 13, 5, dtype=torch.float64)
    y_ref, _ = window_recompute(net, x)
    s, ys = net.initial_state(3), []
    with torch.no_grad():
        for t in range(13):
            y, s = net.step(x[:, t], s)
            ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), y_ref, rtol=0, atol=1e-10)
