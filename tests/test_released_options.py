"""The options that reproduce the released code beyond the layer equations: init scheme, cross-attention
output bias, dropout placement, mixture-of-experts FFN; each on a hand-checked case, and parity
(step == sequence == window recompute) with all of them on."""
import math
import re

import pytest
import torch
from torch import nn

from torchrl_elmur import ELMURBackbone, ELMURConfig, window_recompute
from torchrl_elmur.core.config import MoEConfig
from torchrl_elmur.core.feedforward import MoEFeedForward, load_balancing_loss

ALL_ON = dict(init="released", cross_attn_out_bias=True, dropout_placement="released",
              moe=MoEConfig(num_experts=3, top_k=2, num_shared=2, expert_ff=8, shared_ff=12))


class TestErrs:
    @pytest.mark.parametrize(
        "field, value, allowed",
        [
            ("init", "kaiming", "one of ('torch', 'released')"),
            ("dropout_placement", "everywhere", "one of ('residual', 'released')"),
            ("cross_attn_out_bias", 1, "a bool"),
            ("moe", {"num_experts": 2}, "None or a MoEConfig"),
        ],
    )
    def test_invalid_option(self, field, value, allowed):
        with pytest.raises(ValueError, match=re.escape(f"ELMURConfig.{field}={value!r} is invalid: expected {allowed}")):
            ELMURConfig(**{field: value})

    @pytest.mark.parametrize(
        "field, value, allowed",
        [("num_experts", 0, "an int >= 1"), ("num_shared", -1, "an int >= 0"),
         ("top_k", 3, "an int in [1, num_experts=2]"), ("balance_coef", -0.1, "a float >= 0")],
    )
    def test_invalid_moe(self, field, value, allowed):
        with pytest.raises(ValueError, match=re.escape(f"MoEConfig.{field}={value!r} is invalid: expected {allowed}")):
            MoEConfig(**{field: value})


def small(**changes) -> ELMURConfig:
    base = dict(d_model=16, num_heads=2, segment_len=3, memory_slots=2, input_size=5, max_time_gap=8,
                memory_init_std=0.1)
    return ELMURConfig(**{**base, **changes})


class TestInit:
    def test_torch_default(self):
        net = ELMURBackbone(ELMURConfig())
        assert net.u.abs().sum() == 0 and net.v.abs().sum() == 0
        assert all(layer.gap_bias.abs().sum() == 0 for layer in net.layers)

    def test_released_statistics(self):
        torch.manual_seed(0)
        d = 128
        net = ELMURBackbone(ELMURConfig(d_model=d, num_heads=2, init="released", cross_attn_out_bias=True))
        layer = net.layers[0]
        # u, v ~ N(0, 0.02); time-gap table ~ N(0, 1) (2047 x 2 entries)
        assert abs(net.u.std().item() - 0.02) < 0.004 and abs(net.v.std().item() - 0.02) < 0.004
        assert abs(layer.gap_bias.std().item() - 1.0) < 0.05 and abs(layer.gap_bias.mean().item()) < 0.05
        # xavier-uniform: |w| <= sqrt(6 / (fan_in + fan_out)), std = bound / sqrt(3), per projection
        square = math.sqrt(6 / (2 * d))
        for block in (*layer.read.kv.weight.chunk(2), layer.read.q.weight, layer.write.out.weight, layer.self_attn.out.weight):
            assert block.abs().max() <= square and abs(block.std().item() / (square / math.sqrt(3)) - 1) < 0.1
        fused = math.sqrt(6 / (4 * d))  # the self-attention's qkv is one [3D, D] projection in the released code too
        assert layer.self_attn.qkv.weight.abs().max() <= fused
        assert layer.self_attn.qkv.weight.abs().max() > 0.9 * fused
        assert layer.read.out.bias.abs().sum() == 0 and layer.ffn[0].bias.abs().sum() == 0
        ffn_bound = math.sqrt(6 / (d + 4 * d))
        assert layer.ffn[0].weight.abs().max() <= ffn_bound
        torch_default = ELMURBackbone(ELMURConfig(d_model=d, num_heads=2)).layers[0].read.q.weight
        assert torch_default.std() < 0.7 * layer.read.q.weight.std()  # torch's 1/sqrt(3 fan_in) is smaller

    def test_released_moe_experts(self):
        torch.manual_seed(0)
        net = ELMURBackbone(ELMURConfig(d_model=64, num_heads=2, init="released", moe=MoEConfig()))
        ffn = net.layers[1].mem_ffn
        assert isinstance(ffn, MoEFeedForward)
        bound = math.sqrt(6 / (64 + 256))  # shared width 4 D
        assert ffn.shared.w_up.abs().max() <= bound and ffn.shared.w_up.abs().max() > 0.9 * bound
        assert ffn.router.weight.abs().max() <= math.sqrt(6 / (64 + 2))


def test_cross_attention_output_bias_in_parameters():
    names = lambda cfg: {n for n, _ in ELMURBackbone(cfg).named_parameters()}  # noqa: E731
    with_bias = names(small(cross_attn_out_bias=True)) - names(small())
    assert with_bias == {f"layers.{i}.{w}.out.bias" for i in range(2) for w in ("read", "write")}


class TestDropoutPlacement:
    def test_candidate_dropout_on_the_final_candidate_only(self):
        """released placement, memory_dropout only: the first segment's outputs are untouched in
        training, and a slot written outright (paper rule, empty slot) holds the eval-mode candidate
        with each entry either dropped (0) or scaled by 1 / (1 - p)."""
        torch.manual_seed(0)
        net = ELMURBackbone(small(dropout_placement="released", memory_dropout=0.5)).double()
        x = torch.randn(4, 3, 5, dtype=torch.float64)
        y_eval, s_eval = net.eval()(x)
        y_train, s_train = net.train()(x)
        torch.testing.assert_close(y_train, y_eval)
        written = s_eval.memory_time > 0  # [B, L, M]: one slot per layer
        ratio = s_train.memory[written] / s_eval.memory[written]
        assert torch.all((ratio.abs() < 1e-12) | ((ratio - 2.0).abs() < 1e-9))
        assert (ratio.abs() < 1e-12).any() and ((ratio - 2.0).abs() < 1e-9).any()

    def test_residual_placement_drops_the_write_branches(self):
        """residual placement: memory_dropout acts inside the write path (before its norms), so the
        committed slot is not a masked copy of the eval candidate."""
        torch.manual_seed(0)
        net = ELMURBackbone(small(memory_dropout=0.5)).double()
        x = torch.randn(4, 3, 5, dtype=torch.float64)
        _, s_eval = net.eval()(x)
        _, s_train = net.train()(x)
        written = s_eval.memory_time > 0
        ratio = s_train.memory[written] / s_eval.memory[written]
        assert not torch.all((ratio.abs() < 1e-12) | ((ratio - 2.0).abs() < 1e-9))

    def test_input_and_position_dropout_sites(self):
        torch.manual_seed(0)
        released = ELMURBackbone(small(dropout_placement="released", dropout=0.5))
        residual = ELMURBackbone(small(dropout=0.5))
        x = torch.randn(2, 5)
        for net in (released, residual):
            net.eval()
            assert net._position_mask(torch.float32, "cpu") is None
            torch.testing.assert_close(net._input_tokens(x), net.in_proj(x))
        residual.train()
        assert residual._position_mask(torch.float32, "cpu") is None
        torch.testing.assert_close(residual._input_tokens(x), residual.in_proj(x))
        released.train()
        mask = released._position_mask(torch.float32, "cpu")
        assert mask.shape == (3, 16) and set(mask.unique().tolist()) == {0.0, 2.0}
        dropped = released._input_tokens(x)
        kept = dropped != 0
        torch.testing.assert_close(dropped[kept], 2 * released.in_proj(x)[kept])
        assert (~kept).any()

    def test_eval_mode_has_no_dropout(self):
        torch.manual_seed(0)
        net = ELMURBackbone(small(**ALL_ON, dropout=0.3, attn_dropout=0.3, memory_dropout=0.3)).double().eval()
        x = torch.randn(2, 7, 5, dtype=torch.float64)
        torch.testing.assert_close(net(x)[0], net(x)[0], rtol=0, atol=0)


class TestMoE:
    def test_load_balancing_loss_hand_worked(self):
        # 2 tokens, top-2 of 3 experts: slots go to experts 0, 1 (token 0) and 0, 2 (token 1)
        gates = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
        indices = torch.tensor([[0, 1], [0, 2]])
        # f = [2, 1, 1] / 4, G = [1.25, 0.25, 0.5] / 4  ->  3 * (2.5 + 0.25 + 0.5) / 16
        assert load_balancing_loss(gates, indices, 3).item() == pytest.approx(3 * 3.25 / 16)

    def test_equals_experts_run_one_by_one(self):
        """Dense evaluation with zero gates == each token through its chosen experts (the released loop)."""
        torch.manual_seed(0)
        cfg = small(moe=MoEConfig(num_experts=4, top_k=2, num_shared=2, expert_ff=6, shared_ff=10))
        ffn = MoEFeedForward(cfg).double().eval()
        x = torch.randn(7, 16, dtype=torch.float64)

        def swiglu(w_gate, w_up, w_down, v):
            return w_down @ (torch.nn.functional.silu(w_gate @ v) * (w_up @ v))

        expected = []
        for v in x:
            probs = torch.softmax(ffn.router.weight @ v, -1)
            top, idx = probs.topk(2)
            top = top / top.sum()
            out = sum(g * swiglu(ffn.experts.w_gate[e], ffn.experts.w_up[e], ffn.experts.w_down[:, e], v) for g, e in zip(top, idx))
            out = out + sum(swiglu(ffn.shared.w_gate[s], ffn.shared.w_up[s], ffn.shared.w_down[:, s], v) for s in range(2))
            expected.append(out)
        torch.testing.assert_close(ffn(x), torch.stack(expected), rtol=0, atol=1e-12)

    @pytest.mark.parametrize("top_k, router_learns", [(1, False), (2, True)])
    def test_router_gradient(self, top_k, router_learns):
        """With one routed expert active its gate is 1: the router gets no gradient (every published config)."""
        torch.manual_seed(0)
        ffn = MoEFeedForward(small(moe=MoEConfig(num_experts=3, top_k=top_k))).train()
        out = ffn(torch.randn(5, 16))
        (out.sum() + torch.stack(ffn.aux_losses).sum()).backward()
        grad = ffn.router.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == router_learns
        assert ffn.experts.w_down.grad.abs().sum() > 0

    def test_moe_loss_recorded_in_training_only(self):
        torch.manual_seed(0)
        net = ELMURBackbone(small(moe=MoEConfig(num_experts=2, top_k=1, num_shared=1, expert_ff=4, shared_ff=4)))
        x = torch.randn(3, 7, 5)
        net.eval()(x)
        assert net.moe_loss().item() == 0.0
        net.train()(x)
        # 3 segment chunks; per chunk 2 layers x token FFN, plus the memory FFNs of 2 commits
        calls = sum(len(m.aux_losses) for m in net._moe)
        assert calls == 3 * 2 + 2 * 2
        expected = torch.stack([loss for m in net._moe for loss in m.aux_losses]).sum() / 3
        torch.testing.assert_close(net.moe_loss(), expected)
        # top-1: each loss is 0.1 * 2 * sum_e f_e^2, between 0.1 (balanced) and 0.2 (one expert)
        assert all(0.1 - 1e-6 <= loss.item() <= 0.2 + 1e-6 for m in net._moe for loss in m.aux_losses)

    def test_sequence_loss_reports_loss_moe(self):
        from tensordict import TensorDict
        from tensordict.nn import TensorDictModule, TensorDictSequential

        from torchrl_elmur import ELMURModule
        from torchrl_elmur.objectives import SequenceCrossEntropyLoss

        memory = ELMURModule(config=small(moe=MoEConfig(num_experts=2, top_k=1, num_shared=1, expert_ff=4, shared_ff=4)),
                             in_key="obs", out_key="h")
        actor = TensorDictSequential(memory, TensorDictModule(nn.Linear(16, 3), ["h"], ["logits"])).train()
        td = TensorDict({"obs": torch.randn(2, 6, 5), "action": torch.randint(3, (2, 6)),
                         "is_init": torch.zeros(2, 6, 1, dtype=torch.bool)}, [2, 6])
        losses = SequenceCrossEntropyLoss(actor)(td)
        assert set(losses.keys()) == {"loss_bc", "accuracy", "loss_moe"}
        assert losses["loss_moe"].item() > 0
        plain = ELMURModule(config=small(), in_key="obs", out_key="h")
        actor = TensorDictSequential(plain, TensorDictModule(nn.Linear(16, 3), ["h"], ["logits"]))
        assert "loss_moe" not in SequenceCrossEntropyLoss(actor)(td).keys()


@pytest.mark.parametrize("write_rule", ["paper", "official"])
def test_parity_with_every_option_on(backbone_factory, write_rule):
    """step == sequence == window recompute with all released options on, from a fresh state and
    from a stored mid-segment state."""
    from test_backbone import assert_close, assert_states_equal, run_steps

    net = backbone_factory(write_rule=write_rule, dropout=0.2, attn_dropout=0.2, memory_dropout=0.2, **ALL_ON)
    x = torch.randn(3, 17, 5, dtype=torch.float64)
    y_ref, s_ref = window_recompute(net, x)
    y_seq, s_seq = net(x)
    y_step, s_step = run_steps(net, x)
    assert_close(y_seq, y_ref, torch.float64)
    assert_close(y_step, y_ref, torch.float64)
    assert_states_equal(s_seq, s_ref, torch.float64)
    assert_states_equal(s_step, s_ref, torch.float64)
    y1, s1 = net(x[:, :5])
    y2, s2 = net(x[:, 5:], s1)
    assert_close(torch.cat([y1, y2], 1), y_ref, torch.float64)
    assert_states_equal(s2, s_ref, torch.float64)
