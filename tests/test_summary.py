"""The summary counts each tied parameter once; its rows add up to the unique total."""

import torch

from experiments.models import build_model, materialize
from experiments.summary import parameter_rows, summary_markdown, totals


def model_of(make_cfg, name):
    model = build_model(make_cfg([f"model={name}"]).model)
    materialize(model, torch.rand(2, 4))
    return model


def test_rows_add_up_to_unique_total(make_cfg):
    for name, unique, entries, numbers in [("tied", 121, 8, 193), ("nested", 309, 18, 309), ("mlp", 49, 4, 49)]:
        model = model_of(make_cfg, name)
        rows = parameter_rows(model)
        t = totals(model)
        assert sum(r.count for r in rows) == t["unique_numbers"] == unique
        assert t["state_dict_entries"] == entries and t["state_dict_numbers"] == numbers


def test_tied_row_lists_aliases(make_cfg):
    model = model_of(make_cfg, "tied")
    rows = {r.name: r for r in parameter_rows(model, {"2.weight": "xavier_uniform_()"})}
    assert list(rows) == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    assert rows["2.weight"].aliases == ["2.weight", "4.weight"] and rows["2.weight"].uses == 2
    assert rows["2.weight"].shape == [8, 8] and rows["2.weight"].count == 64
    assert rows["2.weight"].init == "xavier_uniform_()" and rows["0.bias"].init == "unknown"
    text = summary_markdown(model)
    assert "| 2.weight | 2.weight, 4.weight | (8, 8) | 64 | 2 |" in text and "**121**" in text
