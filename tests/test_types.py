"""Head keys: from per-head tables and from names."""
from __future__ import annotations

import pandas as pd
import pytest

import workbench as wb


def test_heads_from_a_table_keep_row_order():
    t = pd.DataFrame({"stream": ["self", "cross", "self"], "layer": [3, 1, 0], "head": [7, 2, 5],
                      "entropy.mean_norm": [0.1, 0.5, 0.2]})
    assert wb.Head.from_table(t) == [wb.Head("self", 3, 7), wb.Head("cross", 1, 2), wb.Head("self", 0, 5)]
    assert wb.Head.from_table(t.nsmallest(2, "entropy.mean_norm")) == [wb.Head("self", 3, 7), wb.Head("self", 0, 5)]
    assert wb.Head.from_table(t.iloc[:0]) == []
    with pytest.raises(KeyError, match="no head column"):
        wb.Head.from_table(t.drop(columns="head"))
    with pytest.raises(ValueError, match="unknown stream"):
        wb.Head.from_table(t.assign(stream="attn"))


def test_head_names_round_trip():
    h = wb.Head("decoder", 2, 4)
    assert wb.Head.parse(h.name) == h
    with pytest.raises(ValueError, match="stream/layer/head"):
        wb.Head.parse("decoder/2")
