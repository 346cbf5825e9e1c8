"""ELMURBackbone: step path == sequence path == window-recompute reference, causality, gradients, errors."""
import re

import pytest
import torch

from torchrl_elmur import ELMURBackbone, ELMURState, window_recompute


def run_steps(net, x, state=None):
    state = net.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y, state = net.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


def assert_close(a, b, dtype):
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    else:
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * scale)


def assert_states_equal(a: ELMURState, b: ELMURState, dtype):
    assert torch.equal(a.memory_time, b.memory_time)
    assert torch.equal(a.step, b.step)
    assert_close(a.memory, b.memory, dtype)
    assert_close(a.cache, b.cache, dtype)


class TestErrs:
    def test_wrong_feature_size(self, backbone_factory):
        net = backbone_factory()
        with pytest.raises(ValueError, match=re.escape("F=5, received shape [2, 4, 7]")):
            net(torch.randn(2, 4, 7, dtype=torch.float64))
        with pytest.raises(ValueError, match=re.escape("shape [B, F] with F=5, received shape [2, 4, 5]")):
            net.step(torch.randn(2, 4, 5, dtype=torch.float64))

    def test_non_floating_input(self, backbone_factory):
        with pytest.raises(TypeError, match="floating point, received dtype torch.int64"):
            backbone_factory()(torch.ones(2, 4, 5, dtype=torch.int64))

    def test_wrong_state_shape(self, backbone_factory):
        net = backbone_factory()
        other = backbone_factory(memory_slots=3).initial_state(2)
        with pytest.raises(ValueError, match=re.escape("ELMURState.memory must have shape [2, 2, 2, 16], received [2, 2, 3, 16]")):
            net(torch.randn(2, 4, 5, dtype=torch.float64), other)
        wrong_batch = net.initial_state(3)
        with pytest.raises(ValueError, match="must have shape"):
            net.step(torch.randn(2, 5, dtype=torch.float64), wrong_batch)

    def test_wrong_state_dtype(self, backbone_factory):
        net = backbone_factory()
        state = net.initial_state(2)
        state.memory_time = state.memory_time.float()
        with pytest.raises(ValueError, match="memory_time must have dtype torch.int64, received torch.float32"):
            net(torch.randn(2, 4, 5, dtype=torch.float64), state)

    def test_bad_lengths(self, backbone_factory):
        with pytest.raises(ValueError, match="lengths"):
            backbone_factory()(torch.randn(2, 4, 5, dtype=torch.float64), lengths=torch.tensor([5, 1]))

    def test_config_type(self):
        with pytest.raises(TypeError, match="expected an ELMURConfig, received dict"):
            ELMURBackbone({"d_model": 16})

    def test_reference_needs_boundary(self, backbone_factory):
        net = backbone_factory()
        x = torch.randn(2, 4, 5, dtype=torch.float64)
        _, mid = net(x)
        with pytest.raises(ValueError, match="segment boundary"):
            window_recompute(net, x, mid)


PARITY_CASES = [
    # (num_layers, segment_len, memory_slots): M below and above the number of segments
    (1, 1, 2), (1, 3, 8), (2, 3, 2), (2, 10, 3), (3, 10, 8), (3, 1, 8), (2, 1, 2), (1, 10, 2),
]


class TestParity:
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @pytest.mark.parametrize("L, K, M", PARITY_CASES)
    @pytest.mark.parametrize("norm_position, norm", [("post", "layernorm"), ("pre", "rmsnorm")])
    def test_step_sequence_reference(self, backbone_factory, dtype, L, K, M, norm_position, norm):
        net = backbone_factory(dtype=dtype, num_layers=L, segment_len=K, memory_slots=M,
                               norm_position=norm_position, norm=norm, seed=L * 100 + K * 10 + M)
        T = 5 * K + 2  # >= 5 segments, ending mid-segment
        x = torch.randn(3, T, 5, dtype=dtype)
        y_ref, s_ref = window_recompute(net, x)
        y_seq, s_seq = net(x)
        y_step, s_step = run_steps(net, x)
        assert_close(y_seq, y_ref, dtype)
        assert_close(y_step, y_ref, dtype)
        assert_states_equal(s_seq, s_step, dtype)
        assert_states_equal(s_seq, s_ref, dtype)
        assert (s_seq.memory_time > 0).sum(-1).eq(min(M, T // K)).all()

    @pytest.mark.parametrize("K", [1, 3, 10])
    def test_start_mid_segment_from_stored_state(self, backbone_factory, K):
        net = backbone_factory(segment_len=K, num_layers=2, memory_slots=2, seed=K)
        T = 6 * K + 1
        x = torch.randn(2, T, 5, dtype=torch.float64)
        y_ref, s_ref = window_recompute(net, x)
        for split in sorted({1, K // 2 + 1, 2 * K + 1, T - 1}):
            y1, s1 = net(x[:, :split])
            y2, s2 = net(x[:, split:], s1)  # continues a partial segment from its cache
            assert_close(torch.cat([y1, y2], 1), y_ref, torch.float64)
            assert_states_equal(s2, s_ref, torch.float64)
            y3, s3 = run_steps(net, x[:, split:], s1)
            assert_close(y3, y2, torch.float64)
            assert_states_equal(s3, s2, torch.float64)

    def test_static_step_equals_step(self, backbone_factory):
        """The sync-free (compile-friendly) step gives the same outputs and states."""
        net = backbone_factory(segment_len=3, memory_slots=2)
        x = torch.randn(3, 11, 5, dtype=torch.float64)
        _, mixed = net(x[:, :4], lengths=torch.tensor([0, 2, 4]))  # rows at different phases
        s_a, s_b = mixed, mixed
        for t in range(4, 11):
            y_a, s_a = net.step(x[:, t], s_a)
            y_b, s_b = net.step(x[:, t], s_b, static=True)
            assert_close(y_b, y_a, torch.float64)
            assert_states_equal(s_b, s_a, torch.float64)

    def test_inplace_step_equals_step(self, backbone_factory):
        """inplace=True gives the same outputs and states, rows at different phases, and updates
        the given state's tensors instead of allocating new ones."""
        net = backbone_factory(segment_len=3)
        x = torch.randn(3, 8, 5, dtype=torch.float64)
        start = net.initial_state(3)
        start.step = torch.tensor([0, 1, 2])  # three phases: commits happen on different steps per row
        with torch.no_grad():
            y_ref, s_ref = run_steps(net, x, start.map(torch.clone))
            s = start.map(torch.clone)
            tensors = [s.memory, s.memory_time, s.cache, s.step]
            ys = []
            for t in range(x.shape[1]):
                y, s = net.step(x[:, t], s, inplace=True)
                ys.append(y)
        torch.testing.assert_close(torch.stack(ys, 1), y_ref, rtol=0, atol=1e-12)
        assert_states_equal(s, s_ref, torch.float64)
        assert all(a is b for a, b in zip(tensors, [s.memory, s.memory_time, s.cache, s.step]))

    def test_inplace_needs_no_grad_and_a_state(self, backbone_factory):
        net = backbone_factory()
        x = torch.randn(2, 5, dtype=torch.float64)
        with pytest.raises(ValueError, match="inplace=True needs .* autograd off"):
            net.step(x, net.initial_state(2), inplace=True)
        with torch.no_grad(), pytest.raises(ValueError, match="received state=None"):
            net.step(x, None, inplace=True)

    def test_rows_at_different_phases_and_lengths(self, backbone_factory):
        net = backbone_factory(segment_len=4, memory_slots=2)
        x = torch.randn(3, 21, 5, dtype=torch.float64)
        # bring the rows to steps 0, 3 and 6 (different phases), one row at a time
        starts = [0, 3, 6]
        _, state = net(x[:, :6], lengths=torch.tensor(starts))
        lengths = torch.tensor([15, 9, 12])
        y, final = net(x[:, 6:], state, lengths=lengths)
        for b in range(3):
            full = torch.cat([x[b : b + 1, : starts[b]], x[b : b + 1, 6 : 6 + lengths[b]]], 1)
            y_ref, s_ref = window_recompute(net, full)
            assert_close(y[b, : lengths[b]], y_ref[0, starts[b] :], torch.float64)
            assert_states_equal(final.map(lambda t: t[b : b + 1]), s_ref, torch.float64)
        # the step path from the same mixed-phase state agrees too
        y_step, _ = run_steps(net, x[:, 6:15], state)
        assert_close(y_step, y[:, :9], torch.float64)

    def test_empty_call_keeps_state(self, backbone_factory):
        net = backbone_factory()
        _, s = net(torch.randn(2, 5, 5, dtype=torch.float64))
        _, s2 = net(torch.randn(2, 3, 5, dtype=torch.float64), s, lengths=torch.zeros(2, dtype=torch.int64))
        assert_states_equal(s2, s, torch.float64)

    def test_reference_from_stored_boundary_state(self, backbone_factory):
        net = backbone_factory(segment_len=3)
        x = torch.randn(2, 14, 5, dtype=torch.float64)
        y_full, s_full = window_recompute(net, x)
        _, s6 = net(x[:, :6])
        y_rest, s_rest = window_recompute(net, x[:, 6:], s6)
        assert_close(y_rest, y_full[:, 6:], torch.float64)
        assert_states_equal(s_rest, s_full, torch.float64)

    def test_fresh_state_is_deterministic_and_uses_initial_vectors(self, backbone_factory):
        net = backbone_factory(segment_len=3)
        x = torch.randn(1, 2, 5, dtype=torch.float64)
        y1, _ = net(x)
        with torch.no_grad():
            net.memory_init.add_(1.0)
        y2, _ = net(x)
        assert not torch.allclose(y1, y2)  # empty slots present memory_init to the read
        assert "memory_init" in net.state_dict()


class TestCausality:
    def test_later_token_never_changes_earlier_outputs(self, backbone_factory):
        net = backbone_factory(segment_len=3)
        x = torch.randn(2, 12, 5, dtype=torch.float64)
        y, _ = net(x)
        for t in (0, 2, 4, 9):
            x2 = x.clone()
            x2[:, t] += 1.0
            y2, _ = net(x2)
            torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=0)
            assert not torch.allclose(y2[:, t], y[:, t])

    def test_token_reaches_memory_only_at_its_segment_end(self, backbone_factory):
        K = 3
        net = backbone_factory(segment_len=K)
        x = torch.randn(1, 12, 5, dtype=torch.float64)
        x2 = x.clone()
        x2[:, 4] += 1.0  # step 4 is in segment 1 (steps 3..5), which ends at step 5
        s, s2 = net.initial_state(1), net.initial_state(1)
        for t in range(12):
            _, s = net.step(x[:, t], s)
            _, s2 = net.step(x2[:, t], s2)
            same = torch.equal(s.memory, s2.memory)
            assert same == (t < 5), t
        # and its effect on later segments' outputs starts with the read after step 5
        y, _ = net(x)
        y2, _ = net(x2)
        torch.testing.assert_close(y2[:, :4], y[:, :4], rtol=0, atol=0)


class TestGradients:
    @pytest.mark.parametrize("detach", [True, False])
    def test_gradient_through_memory(self, backbone_factory, detach):
        K = 3
        net = backbone_factory(segment_len=K, detach_memory=detach)
        x = torch.randn(2, 3 * K, 5, dtype=torch.float64, requires_grad=True)
        y, _ = net(x)
        y[:, 2 * K :].sum().backward()  # loss on segment 2 only
        grad_earlier = x.grad[:, :K].abs().sum().item()  # segment 0 reaches segment 2 only via memory
        if detach:
            assert grad_earlier == 0.0
        else:
            assert grad_earlier > 0.0
        assert x.grad[:, 2 * K :].abs().sum() > 0

    def test_step_path_gradients_flow_within_segment(self, backbone_factory):
        net = backbone_factory(segment_len=4)
        x = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
        y, _ = run_steps(net, x)
        y[:, -1].sum().backward()
        assert (x.grad.abs().sum(-1) > 0).all()

    def test_step_path_gradients_equal_sequence_path(self, backbone_factory):
        """Backward through the step path (it writes each token into the next cache) gives the
        sequence path's gradients, for inputs and weights, across two segment commits."""
        net = backbone_factory(segment_len=3, detach_memory=False)
        x = torch.randn(2, 8, 5, dtype=torch.float64, requires_grad=True)
        w = torch.randn(2, 8, net.config.d_model, dtype=torch.float64)
        grads = []
        for run in (lambda: run_steps(net, x)[0], lambda: net(x)[0]):
            net.zero_grad()
            x.grad = None
            (run() * w).sum().backward()
            grads.append([x.grad.clone()] + [p.grad.clone() for p in net.parameters() if p.grad is not None])
        assert len(grads[0]) == len(grads[1]) > 10
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)

    def test_memory_dropout_changes_only_write_in_training(self, backbone_factory):
        net = backbone_factory(segment_len=2, memory_dropout=0.5).train()
        x = torch.randn(2, 2, 5, dtype=torch.float64)
        y1, s1 = net(x)
        y2, s2 = net(x)
        torch.testing.assert_close(y1, y2)  # first segment reads no written memory: no dropout effect
        assert not torch.allclose(s1.memory, s2.memory)  # but the write is dropped out
        net.eval()
        torch.testing.assert_close(net(x)[1].memory, net(x)[1].memory)


def test_relative_key_cache_follows_weight_updates(backbone_factory):
    """Without autograd the relative-position keys are cached; an in-place weight update invalidates them."""
    net = backbone_factory()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        y_cached, _ = net(x)
        net.layers[0].self_attn.r_proj.weight.mul_(1.5)  # e.g. an optimizer step
        y_after, _ = net(x)
    y_grad, _ = net(x)  # computed afresh with autograd on
    assert not torch.allclose(y_cached, y_after)
    torch.testing.assert_close(y_after, y_grad.detach(), rtol=0, atol=1e-12)


class TestTokensLayout:
    """The ``"tokens"`` state layout: the segment's inputs instead of its keys/values/outputs."""

    @pytest.mark.parametrize("K", [1, 3, 10])
    def test_step_and_mid_segment_starts_equal_the_reference(self, backbone_factory, K):
        net = backbone_factory(segment_len=K, num_layers=2, memory_slots=2, seed=K)
        T = 4 * K + 1
        x = torch.randn(2, T, 5, dtype=torch.float64)
        y_ref, s_ref = window_recompute(net, x)
        y_step, s_step = run_steps(net, x, net.initial_state(2, "tokens"))
        assert_close(y_step, y_ref, torch.float64)
        assert s_step.layout == "tokens" and torch.equal(s_step.memory_time, s_ref.memory_time)
        assert_close(s_step.memory, s_ref.memory, torch.float64)
        for split in sorted({1, K // 2 + 1, 2 * K + 1, T - 1}):
            _, s1 = net(x[:, :split], net.initial_state(2, "tokens"))
            p = split % K
            assert torch.equal(s1.tokens[:, :p], x[:, split - p : split])  # the segment's inputs so far ...
            assert not s1.tokens[:, p:].any()  # ... then zeros
            y2, s2 = net(x[:, split:], s1)
            assert_close(y2, y_ref[:, split:], torch.float64)
            assert_close(s2.memory, s_ref.memory, torch.float64)

    def test_rows_at_different_phases(self, backbone_factory):
        net = backbone_factory(segment_len=4, memory_slots=2)
        x = torch.randn(3, 21, 5, dtype=torch.float64)
        lengths = torch.tensor([0, 3, 6])
        _, cache_state = net(x[:, :6], lengths=lengths)
        _, tokens_state = net(x[:, :6], net.initial_state(3, "tokens"), lengths=lengths)
        y_cache, s_cache = net(x[:, 6:], cache_state)
        y_tokens, s_tokens = net(x[:, 6:], tokens_state)
        assert_close(y_tokens, y_cache, torch.float64)
        assert_close(s_tokens.memory, s_cache.memory, torch.float64)
        assert torch.equal(s_tokens.step, s_cache.step)

    def test_training_from_a_boundary_is_bitwise_the_cache_layout(self, backbone_factory):
        """Same dropout masks, same rounding: results trained with one layout hold for the other."""
        net = backbone_factory(dtype=torch.float32, segment_len=4, dropout=0.2, attn_dropout=0.2,
                               dropout_placement="released").train()
        x = torch.randn(3, 13, 5)
        outputs = []
        for layout in ("cache", "tokens"):
            torch.manual_seed(3)
            outputs.append(net(x, net.initial_state(3, layout))[0])
        assert torch.equal(outputs[0], outputs[1])

    def test_static_and_inplace_need_the_cache_layout(self, backbone_factory):
        net = backbone_factory()
        with pytest.raises(ValueError, match="need a state of layout 'cache', received layout 'tokens'"):
            net.step(torch.randn(2, 5, dtype=torch.float64), net.initial_state(2, "tokens"), static=True)

    def test_state_needs_exactly_one_layout(self):
        t = torch.zeros(1)
        with pytest.raises(ValueError, match="exactly one of cache and tokens"):
            ELMURState(t, t, None, t)
        with pytest.raises(ValueError, match="exactly one of cache and tokens"):
            ELMURState(t, t, t, t, tokens=t)
        with pytest.raises(ValueError, match="layout='kv' is invalid"):
            ELMURState.field_names("kv")
