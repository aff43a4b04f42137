"""Typed analysis parameters (issue 9 §3): one frozen dataclass per analysis, shared by the
Python API (``registry()[name](model, batch, **params)``) and the CLI text path
(``parse_params(values, from_text=True)``, what ``workbench run --param`` hands over)."""
from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from workbench.analyses import Context, registry
from workbench.errors import UserError

REG = registry()
FIELDS = [(name, f) for name, a in REG.items() for f in dataclasses.fields(a.params)]


def _text(v) -> str:
    """How a person would type ``v`` after ``ANALYSIS.KEY=``."""
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return json.dumps(v) if isinstance(v, bool) else str(v)


@pytest.mark.parametrize("name", list(REG))
def test_every_analysis_has_frozen_typed_params_that_round_trip(name):
    a = REG[name]
    assert dataclasses.is_dataclass(a.params) and a.params.__dataclass_params__.frozen
    default = a.parse_params({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(default, "x", 1)
    plain = default.as_json()
    assert plain == a.defaults and json.loads(json.dumps(plain)) == plain
    assert a.parse_params(plain) == default
    assert a.parse_params(json.loads(json.dumps(plain)), from_text=True) == default
    assert a.parse_params({k: _text(v) for k, v in plain.items()}, from_text=True) == default
    assert set(a.params.describe()) == set(plain)


def test_text_values_are_converted_to_the_declared_types():
    assert REG["sinks"].parse_params({"epsilon": "0.2", "min_queries": "7"}, from_text=True).as_json() == \
        {"epsilon": 0.2, "min_queries": 7}
    r = REG["retrieval"].parse_params({"lengths": "256,512", "depths": "[0, 0.5]", "needles": 1, "grid": "quick"},
                                      from_text=True)
    assert (r.lengths, r.depths, r.needles, r.grid) == ((256, 512), (0.0, 0.5), 1, "quick")
    assert all(isinstance(d, float) for d in r.depths)
    f = REG["flow"].parse_params({"allow_slow": "true", "streams": "self", "query": "null"}, from_text=True)
    assert (f.allow_slow, f.streams, f.query) == (True, ("self",), None)
    f = REG["flow"].parse_params({"allow_slow": "False", "streams": "self, decoder", "max_work": "1e6"}, from_text=True)
    assert (f.allow_slow, f.streams, f.max_work) == (False, ("self", "decoder"), 1e6)
    t = REG["taxonomy"].parse_params({"retrieval_grid": "none"}, from_text=True)
    assert t.retrieval_grid is None
    al = REG["alignment"].parse_params({"sentences": "Hello, there", "voice": "en-gb", "speed": "120"}, from_text=True)
    assert (al.sentences, al.voice, al.speed) == (("Hello, there",), "en-gb", 120)
    al = REG["alignment"].parse_params({"sentences": '["One two", "Three"]', "heads": "published"}, from_text=True)
    assert (al.sentences, al.heads) == (("One two", "Three"), "published")


def _bad_values(f, tp) -> list:
    """A wrong-type value and, where the field has a range or choices, out-of-range ones."""
    m = f.metadata
    base = typing.get_args(tp)[0] if type(None) in typing.get_args(tp) else tp
    scalar = typing.get_args(base)[0] if typing.get_origin(base) is tuple else base
    wrong = {bool: "maybe", int: "abc", float: "abc", str: [1, 2]}[scalar]
    out = [wrong]
    if m.get("choices"):
        out.append("no-such-choice")
    if m.get("lo") is not None:
        out.append(m["lo"] - 1 if scalar is int else m["lo"] - 0.5)
    if m.get("hi") is not None:
        out.append(m["hi"] + 1 if scalar is int else m["hi"] + 0.5)
    if scalar is not base:
        out = [[x] if not isinstance(x, list) else x for x in out[1:]] + [[]] + [[wrong]]
    return out


@pytest.mark.parametrize("name,f", FIELDS, ids=[f"{n}.{f.name}" for n, f in FIELDS])
def test_bad_types_and_ranges_raise_one_line_naming_the_parameter(name, f):
    a = REG[name]
    tp = typing.get_type_hints(a.params)[f.name]
    for bad in _bad_values(f, tp):
        for from_text in (False, True):
            with pytest.raises(UserError) as e:
                a.parse_params({f.name: bad}, from_text=from_text)
            msg = str(e.value)
            assert "\n" not in msg and "--" not in msg
            assert msg.startswith(f"{name} parameter {f.name} must be "), msg
            assert repr(bad)[:40] in msg or repr([bad] if not isinstance(bad, list) else bad)[:40] in msg, msg


def test_sinks_epsilon_abc_names_parameter_type_value_and_range():
    with pytest.raises(UserError, match=r"^sinks parameter epsilon must be a number in \(0, 1\); got 'abc'$"):
        REG["sinks"].parse_params({"epsilon": "abc"}, from_text=True)
    with pytest.raises(UserError, match=r"^sinks has no parameter 'thresh'; its parameters are epsilon, min_queries$"):
        REG["sinks"].parse_params({"thresh": 0.5}, from_text=True)
    with pytest.raises(UserError, match="retrieval parameter grid must be one of 'default', 'quick', 'long'; got 'huge'"):
        REG["retrieval"].parse_params({"grid": "huge"})


def test_python_api_checks_types_strictly_and_before_any_compute():
    sinks = REG["sinks"]
    # model and batch are never touched: the call fails on the parameter first
    for bad, text in ((2.0, "2.0"), ("0.3", None), (True, None)):
        with pytest.raises(UserError) as api:
            sinks(None, None, epsilon=bad)
        assert str(api.value).startswith("sinks parameter epsilon must be a number in (0, 1); got ")
        if text is not None:   # the CLI text path gives the same message for the same value
            with pytest.raises(UserError) as cli:
                sinks.parse_params({"epsilon": text}, from_text=True)
            assert str(cli.value) == str(api.value)
    massive = REG["massive"].params(min_abs=50)        # an int is accepted for a float and stored as one
    assert massive.min_abs == 50.0 and isinstance(massive.min_abs, float)
    with pytest.raises(UserError, match="sinks parameter min_queries must be an integer >= 1; got 0"):
        sinks.params(min_queries=0)


def test_run_parses_a_plain_mapping_and_keeps_the_parsed_instance():
    from tiny import tiny_batch, tiny_hf

    import workbench as wb

    model = wb.wrap(tiny_hf("llama"))
    batch = tiny_batch("llama", model.hf)
    ctx = Context(model, batch, {"epsilon": "0.05"})
    got = REG["sinks"].run(ctx)
    assert ctx.params == REG["sinks"].params(epsilon=0.05)
    assert got.table.equals(REG["sinks"](model, batch, epsilon=0.05).table)
    with pytest.raises(UserError, match="sinks parameter epsilon"):
        REG["sinks"].run(Context(model, batch, {"epsilon": "abc"}))
