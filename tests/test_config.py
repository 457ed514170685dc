import json

import numpy as np
import pytest

from ofa_deploy import ConfigError, SubnetConfig

MAX = SubnetConfig.max().to_dict()


def test_json_round_trip(tmp_path):
    cfg = SubnetConfig.sample(np.random.default_rng(5))
    cfg.to_json(tmp_path / "s.json", extra={"target": "x86-host"})
    back = SubnetConfig.from_json(tmp_path / "s.json")
    assert back == cfg
    assert json.loads((tmp_path / "s.json").read_text())["target"] == "x86-host"


def test_r_is_an_alias_for_image_size():
    data = {k: v for k, v in MAX.items() if k != "image_size"} | {"r": 160}
    assert SubnetConfig.from_dict(data).image_size == 160


@pytest.mark.parametrize("change,message", [
    ({"ks": [7] * 19}, "field 'ks' has 19 values, expected 20"),
    ({"e": [6] * 19 + [5]}, r"field 'e\[19\]' = 5 is not allowed; allowed values: 3, 4, 6"),
    ({"d": [4, 4, 1, 4, 4]}, r"field 'd\[2\]' = 1 is not allowed; allowed values: 2, 3, 4"),
    ({"image_size": 226}, "field 'image_size' = 226 is not allowed; allowed values: 128..224 in steps of 4"),
    ({"image_size": 130}, "field 'image_size' = 130"),
    ({"ks": "777"}, "field 'ks' must be a list of integers"),
    ({"ks": [7.5] + [7] * 19}, r"field 'ks\[0\]' = 7.5 is not an integer"),
    ({"space": "nope"}, "unknown search space 'nope'"),
])
def test_validation_names_field_index_and_allowed_values(change, message):
    with pytest.raises(ConfigError, match=message):
        SubnetConfig.from_dict({**MAX, **change})


def test_skipped_genes_must_still_be_valid():
    data = {**MAX, "d": [2] * 5, "ks": [7, 7, 9] + [7] * 17}  # slot 2 is skipped at depth 2
    with pytest.raises(ConfigError, match=r"ks\[2\]"):
        SubnetConfig.from_dict(data)


def test_missing_fields_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="missing field"):
        SubnetConfig.from_dict({"ks": MAX["ks"]})
    bad = tmp_path / "bad.json"
    bad.write_text("{ks: [")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SubnetConfig.from_json(bad)
    with pytest.raises(ConfigError, match="not found"):
        SubnetConfig.from_json(tmp_path / "missing.json")


def test_id_ignores_skipped_genes_only():
    base = SubnetConfig.from_dict({**MAX, "d": [2, 3, 4, 2, 2]})
    skipped_changed = SubnetConfig.from_dict({**base.to_dict(), "ks": [7, 7, 3] + [7] * 17})  # slot 2 skipped
    active_changed = SubnetConfig.from_dict({**base.to_dict(), "ks": [3] + [7] * 19})  # slot 0 active
    assert base != skipped_changed and base.id == skipped_changed.id
    assert base.id != active_changed.id
    assert base.id.startswith("r224-d23422-")


def test_sampling_is_seeded_and_covers_the_space():
    a = [SubnetConfig.sample(np.random.default_rng(0)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(1)
    cfgs = [SubnetConfig.sample(rng) for _ in range(300)]
    assert {c.image_size for c in cfgs} == set(range(128, 225, 4))
    assert {k for c in cfgs for k in c.ks} == {3, 5, 7}
    assert len({c.id for c in cfgs}) == 300


def test_blocks_follow_depths_and_strides():
    cfg = SubnetConfig.from_dict({**MAX, "d": [2, 3, 4, 2, 3]})
    blocks = list(cfg.blocks())
    assert len(blocks) == 14
    assert [b.slot for b in blocks[:5]] == [0, 1, 4, 5, 6]
    assert [b.stride for b in blocks if b.stage == 0] == [2, 1]
    assert blocks[0].in_channels == 16 and blocks[2].in_channels == 24
