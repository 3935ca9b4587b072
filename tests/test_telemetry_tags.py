"""The tag vocabulary: every tag we build parses back to its parts."""

import pytest

from experiments.telemetry import tags
from experiments.telemetry.tags import Tag, parse


@pytest.mark.parametrize("tag, expected", [
    (tags.LOSS_TRAIN, Tag("loss", "train")),
    (tags.ACC_VAL, Tag("acc", "val")),
    (tags.param_norm("0.block 1.2.weight"), Tag("param_norm", "0.block 1.2.weight")),
    (tags.grad_norm("2.bias"), Tag("grad_norm", "2.bias")),
    (tags.update_ratio("6.weight"), Tag("update_ratio", "6.weight")),
    (tags.param_histogram("2.weight"), Tag("param", "2.weight")),
    (tags.grad_histogram("2.weight"), Tag("grad", "2.weight")),
    (tags.tied_grad_norm("2.weight"), Tag("tied", "2.weight", "grad_norm")),
    (tags.cancellation("2.weight"), Tag("tied", "2.weight", "cancellation")),
    (tags.use_stat("2.weight", "4.weight", "grad_norm"), Tag("tied", "2.weight", "grad_norm", "4.weight")),
    (tags.use_stat("2.weight", "2.weight#3", "cos"), Tag("tied", "2.weight", "cos", "2.weight#3")),
    (tags.activation("0.block 1.1", "dead_frac"), Tag("act", "0.block 1.1", "dead_frac")),
])
def test_built_tags_parse_back(tag, expected):
    assert parse(tag) == expected


@pytest.mark.parametrize("tag", ["custom/first_weight_mean", "loss", "tied/2.weight/use/4.weight/mean", "act/mean"])
def test_tags_we_do_not_write_are_none(tag):
    assert parse(tag) is None
