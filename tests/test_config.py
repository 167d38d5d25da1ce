import pytest
from pydantic import ValidationError

from tamis.schemas import SelectConfig, config_error_line, parse_param_pairs, parse_target_pairs


def line(**kw) -> str:
    with pytest.raises(ValidationError) as e:
        SelectConfig(**kw)
    return config_error_line(e.value)


def test_unknown_key_is_named():
    assert line(pool=["p"], out="o", budgett=0.1) == "unknown config key 'budgett'"


@pytest.mark.parametrize("kw, expected", [
    (dict(budget=-1), "bad value for 'budget'"),
    (dict(budget=12.5), "must be whole"),
    (dict(dtype="float8"), "bad value for 'dtype'"),
    (dict(target={"bad name": "x"}), "task name"),
    (dict(selector=["rds", "rds"]), "selector listed twice"),
    (dict(select_by="less"), "not among the selectors"),
])
def test_bad_values_fail_with_one_line(kw, expected):
    msg = line(pool=["p"], out="o", **kw)
    assert expected in msg and "\n" not in msg


def test_params_scope_to_selectors():
    cfg = SelectConfig(pool=["p"], out="o", selector=["rds", "x"], param={"seed_a": 1, "rds.model": "m", "x.k": 3})
    assert cfg.params_for("rds") == {"seed_a": 1, "model": "m"}
    assert cfg.params_for("x") == {"seed_a": 1, "k": 3}
    assert cfg.driver == "rds"


def test_flag_pairs():
    assert parse_param_pairs(["k=3", "name=abc", "flag=true"]) == {"k": 3, "name": "abc", "flag": True}
    assert parse_target_pairs(["math=a.jsonl"]) == {"math": "a.jsonl"}
    with pytest.raises(ValueError, match="expected task=path"):
        parse_target_pairs(["math"])
    with pytest.raises(ValueError, match="given twice"):
        parse_target_pairs(["a=x", "a=y"])
