import pytest

from ofa_deploy.errors import ConfigError
from ofa_deploy.search_space import get_space, list_spaces, make_divisible


@pytest.mark.parametrize("value,expected", [(16, 16), (19.2, 24), (28.8, 32), (36, 40), (18, 24), (134.4, 136), (1152, 1152)])
def test_make_divisible_follows_mobilenet_rounding(value, expected):
    assert make_divisible(value) == expected


@pytest.mark.parametrize("name", list_spaces())
def test_space_size_is_about_2e19(name):
    sp = get_space(name)
    # per stage: 9^2 + 9^3 + 9^4 (kernel x expand per block, depth 2..4), 5 stages
    assert sp.n_architectures() == (81 + 729 + 6561) ** 5
    assert 2e19 < sp.n_architectures() < 2.3e19
    assert sp.resolution_choices == tuple(range(128, 225, 4)) and len(sp.resolution_choices) == 25
    assert sp.n_blocks == 20 and sp.n_stages == 5


def test_w10_macro_architecture_is_mobilenetv3_large():
    sp = get_space("ofa_mbv3_d234_e346_k357_w1.0")
    assert [s.out_channels for s in sp.stages] == [24, 40, 80, 112, 160]
    assert [s.stride for s in sp.stages] == [2, 2, 2, 1, 2]
    assert [s.act for s in sp.stages] == ["relu", "relu", "h_swish", "h_swish", "h_swish"]
    assert [s.use_se for s in sp.stages] == [False, True, False, True, True]
    assert (sp.stem_channels, sp.final_expand_channels, sp.last_channels) == (16, 960, 1280)


def test_accelerator_space_is_mobilenetv3_without_se_and_hswish():
    base, accel = get_space("ofa_mbv3_d234_e346_k357_w1.0"), get_space("ofa_mbv3_relu_nose_d234_e346_k357_w1.0")
    assert [s.out_channels for s in accel.stages] == [s.out_channels for s in base.stages]
    assert [s.stride for s in accel.stages] == [s.stride for s in base.stages]
    assert {s.act for s in accel.stages} == {"relu"} and not any(s.use_se for s in accel.stages)
    assert (accel.stem_head_act, base.stem_head_act) == ("relu", "h_swish")


def test_w12_widths():
    sp = get_space("ofa_mbv3_d234_e346_k357_w1.2")
    assert [s.out_channels for s in sp.stages] == [32, 48, 96, 136, 192]
    assert (sp.stem_channels, sp.final_expand_channels, sp.last_channels) == (24, 1152, 1536)


def test_unknown_space_lists_known_names():
    with pytest.raises(ConfigError, match="allowed: ofa_mbv3_d234_e346_k357_w1.0, ofa_mbv3_d234_e346_k357_w1.2, "
                                          "ofa_mbv3_relu_nose"):
        get_space("mbv3_w2")
