"""The derived segment cache of the default ("tokens") state: a step costs one token's work, and the
outputs stay those of the stored state, whatever happens between two calls (stale, missing or
foreign caches are rebuilt from the stored tokens)."""
import copy
import pickle

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import step_mdp
from torchrl.modules import set_recurrent_mode

from torchrl_elmur.modules.segment_cache import token_path_slots

from test_module import make_module, step_by_step

K = 3  # make_module's segment length


def data(B=3, T=14, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, T, 3, generator=g, dtype=torch.float64)
    is_init = torch.zeros(B, T, 1, dtype=torch.bool)
    is_init[:, 0] = True
    for row, t in ((0, 5), (2, 8), (1, 11)):  # resets mid-row, mid-segment
        if t < T:
            is_init[row, t] = True
    return obs, is_init


def one_step(module, td):
    with torch.no_grad():
        return module(td.clone())


FORMS = [(True, True), (False, False), (True, False), (False, True)]  # the step constants' forms: positions, read folded


def with_forms(module, forms):
    """``module`` with its step constants in these forms (make_module's config folds both)."""
    module.backbone.folds_positions, module.backbone.folds_read = forms
    return module


@pytest.mark.parametrize("forms", FORMS)
def test_steps_equal_recurrent_mode_and_the_cache_layout_with_resets(forms):
    obs, is_init = data()
    m = with_forms(make_module(), forms)
    assert (m.backbone.folds_positions, m.backbone.folds_read) == forms
    with torch.no_grad():
        y_step, _ = step_by_step(m, obs, is_init)
        y_cache, _ = step_by_step(make_module(state_layout="cache"), obs, is_init)
    assert m._segment_cache.rebuilt_rows == 0  # a rollout loop continues its own cache: nothing recomputed
    with set_recurrent_mode(True), torch.no_grad():
        y_seq = m(TensorDict({"obs": obs, "is_init": is_init}, [3, 14]))["h"]
    torch.testing.assert_close(y_step, y_seq, rtol=0, atol=1e-10)
    torch.testing.assert_close(y_step, y_cache, rtol=0, atol=1e-10)


def test_with_autograd_the_recompute_path_gives_the_same_outputs():
    obs, is_init = data()
    with torch.no_grad():
        y_derived, _ = step_by_step(make_module(), obs, is_init)
    y_graph, _ = step_by_step(make_module(), obs, is_init)  # autograd on: the segment recomputed in the graph
    assert y_graph.requires_grad
    torch.testing.assert_close(y_graph.detach(), y_derived, rtol=0, atol=1e-10)


def test_a_stored_state_mid_segment_continues_exactly():
    """A state saved at p = 2 (e.g. in a replay buffer), fed again after the module moved on."""
    obs, is_init = data(T=10)
    m = make_module()
    with torch.no_grad():
        _, td = step_by_step(m, obs[:, :5], is_init[:, :5])  # step 5: p = 5 % 3 = 2
        saved = td.clone()
        y_next, _ = step_by_step(m, obs[:, 5:9], is_init[:, 5:9], state=td)
        assert m._segment_cache.rebuilt_rows == 0
        y_again, _ = step_by_step(m, obs[:, 5:9], is_init[:, 5:9], state=saved)
    # row 0 is reset at t=5: nothing to rebuild there; rows 1, 2 are rebuilt once from their tokens
    assert m._segment_cache.rebuilt_rows == 2
    torch.testing.assert_close(y_again, y_next, rtol=0, atol=1e-12)


def test_missing_cache_after_pickle_and_copy_is_rebuilt():
    obs, is_init = data(T=8)
    m = make_module()
    with torch.no_grad():
        _, td = step_by_step(m, obs[:, :4], is_init[:, :4])  # p = 1
        expected, _ = step_by_step(m, obs[:, 4:], is_init[:, 4:], state=td)
        for other in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
            assert other._segment_cache._entry is None
            got, _ = step_by_step(other, obs[:, 4:], is_init[:, 4:], state=td)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
            assert other._segment_cache.rebuilt_rows == 3


def continue_after(change, T=8, forms=(True, True)):
    """Step 4 steps (p = 1: one earlier token in the segment cache), apply ``change(module, td)``
    (it may return a new tensordict), then continue both the module and a copy of it that never
    saw the earlier steps (pickled: the weights after the change, no cache). Returns the module
    and the two outputs."""
    obs, is_init = data(T=T)
    m = with_forms(make_module(), forms)
    with torch.no_grad():
        _, td = step_by_step(m, obs[:, :4], is_init[:, :4])
        edited = change(m, td)
        td = td if edited is None else edited
        fresh = pickle.loads(pickle.dumps(m))
        got, _ = step_by_step(m, obs[:, 4:], is_init[:, 4:], state=td)
        expected, _ = step_by_step(fresh, obs[:, 4:], is_init[:, 4:], state=td)
    return m, got, expected


def scale_through_data(m, td):
    for p in m.parameters():
        p.data.mul_(1.5)


def nudge_one_token_path_weight(m, td):  # one entry of one tensor, by a little
    m.backbone.layers[1].ffn[0].weight.data[3, 5] += 1e-3


def swap_in_new_weights(m, td):
    TensorDict.from_module(m).apply(lambda t: t * 0.5).to_module(m)


def nudge_the_read_keys(m, td):  # the memory read's key and value projection: kept per segment as a step constant
    m.backbone.layers[0].read.kv.weight.data[2, 1] += 1e-3


def nudge_the_relative_keys(m, td):  # the position projection: its keys are kept while the weights stay
    m.backbone.layers[1].self_attn.r_proj.weight.data[0, 4] += 1e-3


def nudge_the_query_projection(m, td):  # folded with the relative keys into the kept position projection
    m.backbone.layers[0].self_attn.qkv.weight.data[1, 2] += 1e-3


def nudge_the_position_bias(m, td):  # folded with the relative keys too
    m.backbone.v.data[1, 0] += 1e-3


def nudge_the_read_query(m, td):  # folded with the memory's keys into the kept read
    m.backbone.layers[1].read.q.weight.data[3, 0] += 1e-3


def nudge_the_read_output(m, td):  # folded with the memory's values into the kept read
    m.backbone.layers[0].read.out.weight.data[0, 3] += 1e-3


@pytest.mark.parametrize("forms", FORMS)
@pytest.mark.parametrize("change", [scale_through_data, nudge_one_token_path_weight, swap_in_new_weights,
                                    nudge_the_read_keys, nudge_the_relative_keys, nudge_the_query_projection,
                                    nudge_the_position_bias, nudge_the_read_query, nudge_the_read_output])
def test_weight_updates_take_effect_on_the_next_step(change, forms):
    """Weights written where no version counter sees it (``.data``, as TorchRL's weight updaters and
    another process's shared-memory writes) or swapped in: the next step uses them for the whole
    segment, as a module that never saw the old weights does, whichever form the kept constants take."""
    m, got, expected = continue_after(change, forms=forms)
    assert m._segment_cache.rebuilt_rows == 3
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def double_a_write_weight(m, td):
    m.backbone.layers[0].write.q.weight.data.mul_(2.0)


def test_a_changed_write_path_weight_keeps_the_cache():
    """The write path reads the cache at the segment's end; it is not stored in it."""
    m, got, expected = continue_after(double_a_write_weight)
    assert m._segment_cache.rebuilt_rows == 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def edit_a_copy(m, td):
    td = td.clone()
    td["recurrent_state", "tokens"][1, 0] += 0.5
    return td


def edit_in_place(m, td):
    td["recurrent_state", "tokens"][1, 0] += 0.5


def edit_the_memory_of_a_copy(m, td):  # the read's keys and values of that row change too
    td = td.clone()
    td["recurrent_state", "memory"][1] += 0.5
    return td


@pytest.mark.parametrize("edit, rebuilt", [(edit_a_copy, 1), (edit_in_place, 3), (edit_the_memory_of_a_copy, 1)])
def test_an_edited_state_row_is_rebuilt(edit, rebuilt):
    """An edited copy of the state: only the edited row is rebuilt (its cache and its memory's
    read keys and values). The state the module wrote, edited in place (its version counter
    moves): every row with earlier tokens is."""
    m, got, expected = continue_after(edit, T=6)
    assert m._segment_cache.rebuilt_rows == rebuilt
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def no_grad_run_and_inference_mode_start(T=7):
    """Data, the outputs of a module stepped over all of it under no_grad, and a second module with
    its outputs and state after ``T`` steps under ``torch.inference_mode``."""
    obs, is_init = data()
    with torch.no_grad():
        expected, _ = step_by_step(make_module(), obs, is_init)
    m = make_module()
    with torch.inference_mode():
        got, td = step_by_step(m, obs[:, :T], is_init[:, :T])
    return obs, is_init, expected, m, got, td


def test_inference_mode_steps_equal_no_grad_steps():
    obs, is_init, expected, m, got, td = no_grad_run_and_inference_mode_start()
    with torch.inference_mode():
        td["recurrent_state", "tokens"][2, 0] += 0.5  # in place, no version counter: the kept copy tells
        edited, _ = step_by_step(m, obs[:, 7:8], is_init[:, 7:8], state=td)
    assert m._segment_cache.rebuilt_rows == 1
    torch.testing.assert_close(got, expected[:, :7], rtol=0, atol=1e-12)
    assert not torch.allclose(edited[2, 0], expected[2, 7])
    torch.testing.assert_close(edited[:2, 0], expected[:2, 7], rtol=0, atol=1e-12)


def test_another_batch_size_and_dtype_start_a_new_cache():
    obs, is_init = data(B=3, T=8)
    m = make_module()
    with torch.no_grad():
        _, td = step_by_step(m, obs[:, :4], is_init[:, :4])
        expected, _ = step_by_step(pickle.loads(pickle.dumps(m)), obs[:2, 4:], is_init[:2, 4:], state=td[:2])
        got, _ = step_by_step(m, obs[:2, 4:], is_init[:2, 4:], state=td[:2])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        m.float()
        td32 = td.apply(lambda t: t.float() if t.is_floating_point() else t)
        expected32, _ = step_by_step(pickle.loads(pickle.dumps(m)), obs[:, 4:].float(), is_init[:, 4:], state=td32)
        got32, _ = step_by_step(m, obs[:, 4:].float(), is_init[:, 4:], state=td32)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32, expected32, rtol=0, atol=1e-6)


def test_the_fingerprint_covers_every_token_path_tensor_and_no_write_path_one():
    m = make_module()
    slots = token_path_slots(m.backbone)
    seen = {id(where[name]) for where, name in slots}
    names = {n for n, t in [*m.backbone.named_parameters(), *m.backbone.named_buffers()] if id(t) in seen}
    assert all(".write." not in n and "mem_ffn" not in n and "res_write" not in n and "res_mem_ff" not in n for n in names)
    for n, _ in m.backbone.named_parameters():
        written = any(part in n for part in (".write.", "mem_ffn", "res_write", "res_mem_ff"))
        assert (n in names) != written, n


def test_a_step_that_fails_leaves_no_cache_behind():
    """The cache is written in place during a step: after a step that raised, the next step
    rebuilds instead of trusting it."""
    obs, is_init = data(T=6)
    m = make_module()
    with torch.no_grad():
        _, td = step_by_step(m, obs[:, :2], is_init[:, :2])  # p = 2 = K - 1: the next step completes the segment
        expected, _ = step_by_step(pickle.loads(pickle.dumps(m)), obs[:, 2:3], is_init[:, 2:3], state=td)
        cache = m._segment_cache

        def fail(*args):  # after the step zeroed the completed segment's cache rows
            raise RuntimeError("injected")
        cache.remember = fail
        with pytest.raises(RuntimeError, match="injected"):
            step_by_step(m, obs[:, 2:3], is_init[:, 2:3], state=td)
        del cache.remember
        got, _ = step_by_step(m, obs[:, 2:3], is_init[:, 2:3], state=td)
    assert m._segment_cache.rebuilt_rows == 3
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_steps_under_inference_mode_then_no_grad_continue_exactly():
    """An evaluation under torch.inference_mode, then the same module stepping under no_grad (as a
    collector runs it) from a state of the first: the cache kept under inference mode cannot be
    written outside it, so it is rebuilt from the state's tokens."""
    obs, is_init, expected, m, _, td = no_grad_run_and_inference_mode_start()
    with torch.no_grad():
        rest, _ = step_by_step(m, obs[:, 7:], is_init[:, 7:], state=td.clone())
    torch.testing.assert_close(rest, expected[:, 7:], rtol=0, atol=1e-12)


def test_a_change_of_autocast_starts_afresh():
    """Steps under bfloat16 autocast, then without it, and back (float32 module): the kept keys of
    one mode are never used in the other (before, the position keys kept under autocast were bf16
    and the next float32 step failed in its einsum); each stretch equals a module that only ever
    stepped in that mode from the same state."""
    obs, is_init = data(T=9)
    obs = obs.float()
    m = make_module().float()
    ref = make_module().float()
    with torch.no_grad():
        _, td = step_by_step(m, obs[:, :4], is_init[:, :4])  # p = 1: the segment's earlier token is kept
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got_bf16, td2 = step_by_step(m, obs[:, 4:6], is_init[:, 4:6], state=td)
            want_bf16, _ = step_by_step(pickle.loads(pickle.dumps(ref)), obs[:, 4:6], is_init[:, 4:6], state=td)
        got, _ = step_by_step(m, obs[:, 6:], is_init[:, 6:], state=td2)
        want, _ = step_by_step(pickle.loads(pickle.dumps(ref)), obs[:, 6:], is_init[:, 6:], state=td2)
    torch.testing.assert_close(got_bf16, want_bf16, rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_inference_mode_then_no_grad_with_read_keys_kept_under_inference_mode():
    """The kept read keys and values made under inference mode (a new rollout there: every row at a
    segment's start) are not written in place outside it when only some rows start a segment."""
    obs, is_init = data()
    m = make_module()
    with torch.no_grad():
        step_by_step(m, obs[:, :2], is_init[:, :2])  # a cache of this batch size, made outside inference mode
    with torch.inference_mode():
        _, td = step_by_step(m, obs[:, :4], is_init[:, :4])
    with torch.no_grad():
        expected, _ = step_by_step(make_module(), obs[:, 4:], is_init[:, 4:], state=td.clone())
        got, _ = step_by_step(m, obs[:, 4:], is_init[:, 4:], state=td.clone())  # row 0 resets at t = 5
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def switch_the_constant_forms(m, td):  # kept constants of the other forms are not used: the step starts afresh
    m.backbone.folds_positions = m.backbone.folds_read = False


def test_a_switch_of_the_constant_forms_starts_afresh():
    m, got, expected = continue_after(switch_the_constant_forms)
    assert m._segment_cache.rebuilt_rows == 3
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
