import re

import pytest

from torchrl_elmur import ELMURConfig
from torchrl_elmur.core.config import with_options


class TestErrs:
    @pytest.mark.parametrize(
        "field, value, allowed",
        [
            ("d_model", 10, "a multiple of num_heads=4"),
            ("segment_len", 0, "an int >= 1"),
            ("memory_slots", 0, "an int >= 1"),
            ("num_layers", 1.5, "an int >= 1"),
            ("lru_blend", 1.2, "a float in [0, 1]"),
            ("lru_blend", -0.1, "a float in [0, 1]"),
            ("dropout", 1.0, "a float in [0, 1)"),
            ("norm", "batchnorm", "one of ('layernorm', 'rmsnorm')"),
            ("norm_position", "middle", "one of ('post', 'pre')"),
            ("write_rule", "fifo", "one of ('paper', 'official', 'replace_all')"),
            ("memory_init_std", -1.0, "a float >= 0"),
            ("input_size", 0, "None or an int >= 1"),
        ],
    )
    def test_invalid_field_names_field_value_and_allowed(self, field, value, allowed):
        kwargs = {"num_heads": 4, field: value}
        with pytest.raises(ValueError, match=re.escape(f"ELMURConfig.{field}={value!r} is invalid: expected {allowed}")):
            ELMURConfig(**kwargs)

    def test_unknown_option_raises(self):
        with pytest.raises(TypeError, match="unexpected keyword argument 'memory_size'"):
            ELMURConfig(memory_size=4)
        with pytest.raises(TypeError):
            ELMURConfig().replace(window=3)


def test_defaults_and_derived():
    c = ELMURConfig()
    assert (c.d_model, c.num_layers, c.num_heads, c.memory_slots, c.segment_len) == (128, 2, 2, 2, 10)
    assert c.write_rule == "paper" and c.norm_position == "post" and c.norm == "layernorm"
    assert c.detach_memory is False and c.max_time_gap == 1024  # chosen by benchmarks/default_options.py
    assert with_options(c, "bare-no-detach") == c
    assert c.head_dim == 64 and c.ff_dim == 512 and c.token_size == 128
    assert ELMURConfig(input_size=7).token_size == 7


@pytest.mark.parametrize(
    "preset, expected",
    [  # ../shared/ELMUR.md section 5: (D, L, H, M, K, lambda, sigma, norm)
        (ELMURConfig.tmaze, (128, 2, 2, 2, 10, 0.79, 0.001, "layernorm")),
        (ELMURConfig.popgym, (64, 12, 4, 8, 35, 0.79, 0.0, "rmsnorm")),
        (ELMURConfig.mikasa_remember_color, (128, 4, 16, 256, 20, 0.41, 0.1, "layernorm")),
        (ELMURConfig.mikasa_take_it_back, (32, 2, 16, 32, 60, 0.19, 0.001, "layernorm")),
    ],
)
def test_published_presets(preset, expected):
    c = preset()
    got = (c.d_model, c.num_layers, c.num_heads, c.memory_slots, c.segment_len, c.lru_blend, c.memory_init_std, c.norm)
    assert got == expected
    assert c.norm_position == "post" and c.norm_eps == 1e-8
    assert preset(segment_len=5).segment_len == 5
    # the published options, whatever ELMURConfig's defaults are: detached memory, the paper's rule, plain parts
    assert (c.detach_memory, c.write_rule, c.init, c.cross_attn_out_bias, c.dropout_placement, c.moe) == \
        (True, "paper", "torch", False, "residual", None)


def test_presets_do_not_follow_the_defaults(monkeypatch):
    """A preset built while ELMURConfig's defaults say otherwise still has the published options."""
    import dataclasses

    init_defaults = ELMURConfig.__init__.__defaults__
    names = [f.name for f in dataclasses.fields(ELMURConfig)]
    patched = tuple({"norm": "rmsnorm", "detach_memory": False, "norm_eps": 1e-3, "write_rule": "official"}.get(n, d)
                    for n, d in zip(names[len(names) - len(init_defaults):], init_defaults))
    monkeypatch.setattr(ELMURConfig.__init__, "__defaults__", patched)
    assert ELMURConfig().detach_memory is False and ELMURConfig().norm == "rmsnorm"  # the patch took
    for preset in (ELMURConfig.tmaze, ELMURConfig.mikasa_remember_color, ELMURConfig.mikasa_take_it_back):
        c = preset()
        assert (c.norm, c.detach_memory, c.norm_eps, c.write_rule) == ("layernorm", True, 1e-8, "paper")
    assert (ELMURConfig.popgym().norm, ELMURConfig.popgym().detach_memory) == ("rmsnorm", True)


def test_tmaze_dropouts():
    c = ELMURConfig.tmaze()
    assert (c.dropout, c.attn_dropout) == (0.10, 0.17)


def test_tmaze_released_preset():
    from torchrl_elmur import ELMURBackbone
    from torchrl_elmur.core.config import MoEConfig

    c = ELMURConfig.tmaze_released()
    assert (c.init, c.cross_attn_out_bias, c.dropout_placement, c.write_rule) == ("released", True, "released", "official")
    assert c.moe == MoEConfig(num_experts=2, top_k=1, num_shared=2, balance_coef=0.1) and c.moe.widths(128) == (32, 512)
    assert MoEConfig().widths(128) == (32, 512) and MoEConfig().widths(64) == (16, 256)
    assert (c.lru_blend, c.detach_memory, c.memory_dropout) == (0.79, True, 0.01)
    assert ELMURConfig.tmaze_released(write_rule="paper").write_rule == "paper"
    assert sum(p.numel() for p in ELMURBackbone(c).parameters()) == 2_109_692  # the paper: 2.1M


def test_option_sets_name_every_option_and_no_size():
    """Each named option set gives every field of OPTION_FIELDS (so with_options replaces all of a
    config's options, none left over from the preset) and nothing else (sizes are kept)."""
    import dataclasses

    from torchrl_elmur.core.config import OPTION_FIELDS, OPTION_SETS

    fields = {f.name for f in dataclasses.fields(ELMURConfig)}
    assert set(OPTION_FIELDS) <= fields
    for name, options in OPTION_SETS.items():
        assert set(options) == set(OPTION_FIELDS), name
    small = ELMURConfig(d_model=32, num_heads=2, num_layers=1, segment_len=4, memory_slots=3)
    for name in OPTION_SETS:
        config = with_options(small, name)
        assert (config.d_model, config.num_layers, config.segment_len, config.memory_slots) == (32, 1, 4, 3)


def test_option_set_names_are_the_choices_offered():
    import typing

    from torchrl_elmur.core.config import OPTION_SETS, OptionSetName

    assert list(typing.get_args(OptionSetName)) == list(OPTION_SETS)
