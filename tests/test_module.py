"""ELMURModule: keys and errors, then parity (mirroring TorchRL's own RNN tests)."""
import re

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import step_mdp
from torchrl.modules import set_recurrent_mode

from torchrl_elmur import ELMURConfig, ELMURModule

FIELDS = {"tokens": ["memory", "memory_time", "tokens", "step"], "cache": ["memory", "memory_time", "cache", "step"]}
STATE = [("recurrent_state", name) for name in FIELDS["tokens"]]  # the default layout's state fields


def state_fields(layout: str) -> list[tuple[str, str]]:
    return [("recurrent_state", name) for name in FIELDS[layout]]


def nxt(key: tuple) -> tuple:
    return ("next", *key)


def make_module(**kwargs) -> ELMURModule:
    torch.manual_seed(0)
    base = dict(input_size=3, hidden_size=16, num_heads=2, segment_len=3, memory_slots=2, memory_init_std=0.1,
                in_key="obs", out_key="h")
    module = ELMURModule(**{**base, **kwargs}).double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    return module


def step_by_step(module, obs, is_init, state=None):
    """Run [B, T] data one step at a time the way a collector does (step_mdp carries the state)."""
    B, T = obs.shape[:2]
    td = TensorDict({}, [B]) if state is None else state.clone()
    outs = []
    for t in range(T):
        td["obs"], td["is_init"] = obs[:, t], is_init[:, t]
        td = module(td)
        outs.append(td["h"])
        td = step_mdp(td, keep_other=True)
    return torch.stack(outs, 1), td


class TestErrs:
    def test_key_arguments_exclusive(self):
        with pytest.raises(ValueError, match="exactly one of in_key or in_keys"):
            ELMURModule(3, 16, in_key="a", in_keys=["a", "s"], out_key="h")
        with pytest.raises(ValueError, match="exactly one of in_key or in_keys"):
            ELMURModule(3, 16, out_key="h")
        with pytest.raises(ValueError, match="exactly one of out_key or out_keys"):
            ELMURModule(3, 16, in_key="a")
        for keys in (["a"], ["a", "b", "c", "d"], ["a", "is_init", "b"]):
            with pytest.raises(ValueError, match=re.escape("in_keys must be [value, state] or [value, state_1, state_2]")):
                ELMURModule(3, 16, in_keys=keys, out_key="h")
        with pytest.raises(ValueError, match="out_keys must be"):
            ELMURModule(3, 16, in_key="a", out_keys=["h", ("next", "b"), ("next", "c")])

    def test_config_arguments(self):
        with pytest.raises(ValueError, match="hidden_size is required"):
            ELMURModule(in_key="a", out_key="h")
        with pytest.raises(ValueError, match=re.escape("not both; received config and ['hidden_size']")):
            ELMURModule(hidden_size=8, config=ELMURConfig(), in_key="a", out_key="h")
        with pytest.raises(TypeError, match="unexpected keyword argument 'window'"):
            ELMURModule(3, 16, window=4, in_key="a", out_key="h")
        with pytest.raises(ValueError, match="ELMURConfig.lru_blend=2.0 is invalid"):
            ELMURModule(3, 16, lru_blend=2.0, in_key="a", out_key="h")

    def test_missing_keys(self):
        m = make_module()
        with pytest.raises(KeyError, match="input key 'obs' not found"):
            m(TensorDict({"is_init": torch.ones(2, 1, dtype=torch.bool)}, [2]))
        with pytest.raises(KeyError, match="'is_init' not found"):
            m(TensorDict({"obs": torch.randn(2, 3, dtype=torch.float64)}, [2]))

    def test_bad_value(self):
        m = make_module()
        init = torch.ones(2, 1, dtype=torch.bool)
        with pytest.raises(ValueError, match=re.escape("'obs' must have shape [*batch, F] = [2, 3], received [2, 4]")):
            m(TensorDict({"obs": torch.randn(2, 4, dtype=torch.float64), "is_init": init}, [2]))
        with pytest.raises(ValueError, match="'obs' must have dtype torch.float64, received torch.float32"):
            m(TensorDict({"obs": torch.randn(2, 3), "is_init": init}, [2]))
        with pytest.raises(ValueError, match="'obs' must have dtype torch.float64, received torch.int64"):
            m(TensorDict({"obs": torch.ones(2, 3, dtype=torch.int64), "is_init": init}, [2]))
        obs = torch.randn(2, 3, dtype=torch.float64)
        obs[1, 2] = float("nan")
        with pytest.raises(ValueError, match="'obs' contains NaN"):
            m(TensorDict({"obs": obs, "is_init": init}, [2]))

    def test_bad_state(self):
        m = make_module()
        td = TensorDict({"obs": torch.randn(2, 3, dtype=torch.float64), "is_init": torch.zeros(2, 1, dtype=torch.bool)}, [2])
        td["recurrent_state"] = m(td.clone())["next", "recurrent_state"]  # a valid state, then break it
        other = make_module(memory_slots=4)
        state = other(td.exclude("recurrent_state"))["next"]
        td["recurrent_state", "memory"] = state["recurrent_state", "memory"]
        with pytest.raises(ValueError, match=re.escape(
                "state 'recurrent_state' field 'memory' must have shape [2, 2, 2, 16], received [2, 2, 4, 16]")):
            m(td)
        td["recurrent_state", "memory"] = torch.zeros(2, 2, 2, 16, dtype=torch.float64)
        td["recurrent_state", "step"] = torch.zeros(2, 1)
        with pytest.raises(ValueError, match="field 'step' must have dtype torch.int64, received torch.float32"):
            m(td)
        del td["recurrent_state", "step"]
        with pytest.raises(KeyError, match="state 'recurrent_state' has no field 'step'"):
            m(td)
        # an RNN's hidden state where ELMUR expects its own, and a state of the other layout
        td["recurrent_state"] = torch.ones(2, 1, 16, dtype=torch.float64)
        with pytest.raises(ValueError, match=re.escape("state 'recurrent_state' must be a TensorDict with fields "
                                                       "['memory', 'memory_time', 'tokens', 'step']")):
            m(td)
        # zeros in an RNN's shape (how code written for GRUModule starts an episode): a fresh state
        td["recurrent_state"] = torch.zeros(2, 1, 16, dtype=torch.float64)
        fresh = TensorDict({"obs": td["obs"], "is_init": td["is_init"]}, [2])
        torch.testing.assert_close(m(td.clone())["h"], m(fresh)["h"], rtol=0, atol=0)
        td["recurrent_state"] = make_module(state_layout="cache")(td.exclude("recurrent_state"))["next", "recurrent_state"]
        with pytest.raises(KeyError, match="no field 'tokens'.*state_layout='tokens'"):
            m(td)

    def test_recurrent_mode_is_read_only(self):
        m = make_module()
        with pytest.raises(RuntimeError, match="cannot be changed in-place"):
            m.recurrent_mode = True
        with pytest.raises(RuntimeError, match="set_recurrent_mode context manager"):
            m.set_recurrent_mode(True)
        with pytest.raises(ValueError, match="0-d tensordict"):
            with set_recurrent_mode(True):
                m(TensorDict({"obs": torch.randn(3, dtype=torch.float64), "is_init": torch.ones(1, dtype=torch.bool)}, []))

    def test_primer_needs_next_keys(self):
        m = ELMURModule(3, 16, in_keys=["obs", "rs"], out_keys=["h", ("next", "x")])
        with pytest.raises(RuntimeError, match="must be \\('next', 'rs'\\)"):
            m.make_tensordict_primer()


class TestKeysAndModes:
    def test_default_keys(self):
        m = ELMURModule(3, 16, in_key="obs", out_key="h")
        assert m.in_keys == ["obs", "recurrent_state", "is_init"]  # GRUModule's layout and default name
        assert m.out_keys == ["h", ("next", "recurrent_state")]
        assert m.config.input_size == 3 and m.config.d_model == 16

    def test_state_key_and_explicit_keys(self):
        m = ELMURModule(3, 16, in_key="obs", out_key="h", state_key="critic_rs")
        assert m.state_keys == ["critic_rs"] and m.next_state_keys == [("next", "critic_rs")]
        m2 = ELMURModule(3, 16, in_keys=["obs", ("s", "a"), "is_init"], out_keys=["h", ("next", "s", "a")])
        assert m2.in_keys == ["obs", ("s", "a"), "is_init"]
        assert set(m2.make_tensordict_primer().primers.keys(True, True)) == {("s", "a", f) for f in FIELDS["tokens"]}
        m3 = ELMURModule(3, 16, in_keys=("obs", "rs"), out_keys=("h", ("next", "rs")))  # tuples, as GRUModule takes
        assert m3.in_keys == ["obs", "rs", "is_init"]

    def test_config_constructor(self):
        cfg = ELMURConfig.tmaze(input_size=4)
        m = ELMURModule(config=cfg, in_key="obs", out_key="h")
        assert m.config is cfg

    def test_primer_specs(self):
        m = make_module()
        specs = m.make_tensordict_primer().primers
        assert specs["recurrent_state", "memory"].shape == (2, 2, 16) and specs["recurrent_state", "memory"].dtype == torch.float64
        assert specs["recurrent_state", "memory_time"].shape == (2, 2) and specs["recurrent_state", "memory_time"].dtype == torch.int64
        assert specs["recurrent_state", "tokens"].shape == (2, 3)  # [K-1, F]
        assert specs["recurrent_state", "step"].shape == (1,) and specs["recurrent_state", "step"].dtype == torch.int64
        # sizes that tell the cache's dims apart: [H, K, L, 3, D/H]
        m = ELMURModule(input_size=3, hidden_size=20, num_layers=3, num_heads=4, segment_len=5, in_key="obs", out_key="h",
                        state_layout="cache")
        assert m.make_tensordict_primer().primers["recurrent_state", "cache"].shape == (4, 5, 3, 3, 5)
        assert ("recurrent_state", "tokens") not in m.make_tensordict_primer().primers.keys(True)

    def test_default_recurrent_mode_and_context(self):
        m = make_module(default_recurrent_mode=True)
        assert m.recurrent_mode
        with set_recurrent_mode(False):
            assert not m.recurrent_mode
        assert not make_module().recurrent_mode

    @pytest.mark.parametrize("batch", [[], [3], [2, 2]])
    def test_step_mode_batch_shapes(self, batch):
        m = make_module()
        td = TensorDict({"obs": torch.randn(*batch, 3, dtype=torch.float64),
                         "is_init": torch.ones(*batch, 1, dtype=torch.bool)}, batch)
        out = m(td)
        assert out["h"].shape == (*batch, 16)
        assert out["next", "recurrent_state", "tokens"].shape == (*batch, 2, 3)
        assert (out["next", "recurrent_state", "step"] == 1).all()

    def test_is_init_resets_state(self):
        m = make_module()
        obs = torch.randn(2, 7, 3, dtype=torch.float64)
        is_init = torch.zeros(2, 7, 1, dtype=torch.bool)
        is_init[:, 0] = True
        _, td = step_by_step(m, obs, is_init)  # a used state after 7 steps
        td["obs"], td["is_init"] = obs[:, 0], torch.tensor([[True], [False]])
        out = m(td)
        fresh = m(TensorDict({"obs": obs[:, 0], "is_init": torch.ones(2, 1, dtype=torch.bool)}, [2]))
        torch.testing.assert_close(out["h"][0], fresh["h"][0], rtol=0, atol=0)
        assert not torch.allclose(out["h"][1], fresh["h"][1])
        assert out["next", "recurrent_state", "step"].squeeze(-1).tolist() == [1, 8]


class TestParity:
    @pytest.mark.parametrize("layout", ["tokens", "cache"])
    @pytest.mark.parametrize("T", [1, 4, 11])
    def test_step_by_step_equals_recurrent(self, T, layout):
        """Collector-style step-by-step with step_mdp == one recurrent-mode call."""
        m = make_module(state_layout=layout)
        obs = torch.randn(3, T, 3, dtype=torch.float64)
        is_init = torch.zeros(3, T, 1, dtype=torch.bool)
        is_init[:, 0] = True
        y_step, last = step_by_step(m, obs, is_init)
        with set_recurrent_mode(True):
            seq = m(TensorDict({"obs": obs, "is_init": is_init}, [3, T]))
        torch.testing.assert_close(seq["h"], y_step, rtol=0, atol=1e-10)
        for key in state_fields(layout):  # ("next", state) at the row end is the real final state
            torch.testing.assert_close(seq[nxt(key)][:, -1], last[key], rtol=0, atol=1e-10)

    @pytest.mark.parametrize("layout", [pytest.param("cache", marks=pytest.mark.slow),  # ~25 s of inductor; the
                                        "tokens"])  # cache layout compiled: test_fast_paths::test_compiled_cpu_step_equals_eager
    def test_compiled_step_mode_equals_eager(self, layout):
        """compile_step (torch.compile of the sync-free step; inductor on CPU) gives the eager
        outputs with resets mid-stream, with either state layout (the default steps its derived
        cache through the compiled paths), and survives pickling (collector workers) by compiling
        again."""
        import pickle

        m = make_module(state_layout=layout)
        obs = torch.randn(3, 8, 3, dtype=torch.float64)
        is_init = torch.zeros(3, 8, 1, dtype=torch.bool)
        is_init[:, 0] = True
        is_init[1, 4] = True
        with torch.no_grad():
            y_eager, last_eager = step_by_step(m, obs, is_init)
            compiled = pickle.loads(pickle.dumps(make_module(state_layout=layout).compile_step("default")))
            assert compiled._compiled_step is not None
            y_compiled, last_compiled = step_by_step(compiled, obs, is_init)
        torch.testing.assert_close(y_compiled, y_eager, rtol=0, atol=1e-10)
        for key in state_fields(layout):
            torch.testing.assert_close(last_compiled[key], last_eager[key], rtol=0, atol=1e-10)
        assert make_module().compile_step(None)._compiled_step is None
        with pytest.raises(ValueError, match="mode 'reduce-overhead' .* needs state_layout='cache', received 'tokens'"):
            make_module().compile_step("reduce-overhead")

    def test_packed_batch_equals_separate_trajectories(self):
        """A row holding several trajectories (mid-row is_init) == each trajectory run alone."""
        m = make_module()
        obs = torch.randn(2, 13, 3, dtype=torch.float64)
        is_init = torch.zeros(2, 13, 1, dtype=torch.bool)
        is_init[:, 0] = True
        is_init[0, 5] = is_init[0, 9] = is_init[1, 7] = True
        with set_recurrent_mode(True):
            packed = m(TensorDict({"obs": obs, "is_init": is_init}, [2, 13]))
            for row, (a, b) in [(0, (0, 5)), (0, (5, 9)), (0, (9, 13)), (1, (0, 7)), (1, (7, 13))]:
                alone = m(TensorDict({"obs": obs[row, a:b], "is_init": is_init[row, a:b]}, [b - a]))
                torch.testing.assert_close(packed["h"][row, a:b], alone["h"], rtol=0, atol=1e-12)
                for key in STATE:
                    torch.testing.assert_close(packed[nxt(key)][row, b - 1], alone[nxt(key)][-1], rtol=0, atol=1e-12)
        # ("next", state) is zero except at trajectory ends
        ends = packed["next", "recurrent_state", "step"].squeeze(-1)
        assert (ends != 0).nonzero().tolist() == [[0, 4], [0, 8], [0, 12], [1, 6], [1, 12]]
        assert ends[0, 4] == 5 and ends[1, 12] == 6

    @pytest.mark.parametrize("layout", ["tokens", "cache"])
    def test_recurrent_restarts_from_stored_state(self, layout):
        """A slice that starts mid-episode continues from the state stored at its first step."""
        m = make_module(state_layout=layout)
        obs = torch.randn(2, 12, 3, dtype=torch.float64)
        is_init = torch.zeros(2, 12, 1, dtype=torch.bool)
        is_init[:, 0] = True
        y_full, _ = step_by_step(m, obs, is_init)
        _, mid = step_by_step(m, obs[:, :5], is_init[:, :5])  # the state stored before step 5 (mid-segment)
        tail = TensorDict({"obs": obs[:, 5:], "is_init": torch.zeros(2, 7, 1, dtype=torch.bool)}, [2, 7])
        for key in state_fields(layout):
            tail[key] = torch.zeros(2, 7, *mid[key].shape[1:], dtype=mid[key].dtype)
            tail[key][:, 0] = mid[key]  # only t=0 is read
        with set_recurrent_mode(True):
            out = m(tail)
        torch.testing.assert_close(out["h"], y_full[:, 5:], rtol=0, atol=1e-10)
        assert out["next", "recurrent_state", "step"][:, -1].squeeze(-1).tolist() == [12, 12]

    def test_flat_and_multi_batch_recurrent(self):
        m = make_module()
        obs = torch.randn(2, 2, 6, 3, dtype=torch.float64)
        is_init = torch.zeros(2, 2, 6, 1, dtype=torch.bool)
        with set_recurrent_mode(True):
            nested = m(TensorDict({"obs": obs, "is_init": is_init}, [2, 2, 6]))
            flat = m(TensorDict({"obs": obs[1, 0], "is_init": is_init[1, 0]}, [6]))
        assert nested["h"].shape == (2, 2, 6, 16) and flat["h"].shape == (6, 16)
        torch.testing.assert_close(nested["h"][1, 0], flat["h"], rtol=0, atol=1e-12)

    def test_identical_when_called_twice_and_inputs_untouched(self):
        m = make_module()
        obs = torch.randn(2, 8, 3, dtype=torch.float64)
        is_init = torch.zeros(2, 8, 1, dtype=torch.bool)
        td = TensorDict({"obs": obs, "is_init": is_init}, [2, 8])
        with set_recurrent_mode(True):
            first = m(td.clone())
            again = m(first.clone())
        torch.testing.assert_close(first["h"], again["h"], rtol=0, atol=0)
        assert torch.equal(first["obs"], obs) and torch.equal(first["is_init"], is_init)
        _, step_td = step_by_step(m, obs[:, :4], is_init[:, :4])  # a mid-episode state
        step_td["obs"], step_td["is_init"] = obs[:, 4], is_init[:, 4]
        before = step_td.clone()
        out1 = m(step_td)["h"].clone()
        out2 = m(step_td)["h"]
        torch.testing.assert_close(out1, out2, rtol=0, atol=0)
        for key in ["obs", "is_init", *STATE]:
            assert torch.equal(step_td[key], before[key]), key

    def test_gradients_in_recurrent_mode(self):
        m = make_module().train()
        obs = torch.randn(2, 9, 3, dtype=torch.float64)
        is_init = torch.zeros(2, 9, 1, dtype=torch.bool)
        with set_recurrent_mode(True):
            out = m(TensorDict({"obs": obs, "is_init": is_init}, [2, 9]))
        out["h"].pow(2).mean().backward()
        grad = m.backbone.layers[0].self_attn.qkv.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
