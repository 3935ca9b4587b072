"""Role labels of the uses of a tied parameter, from their names (and which are an embedding's)."""

from experiments.use_roles import (DEPTH, EMBEDDING, TIME, kind_of, kind_of_roles, parse_roles_markdown, roles,
                                   roles_markdown)


def test_an_embedding_tie_is_input_and_output():
    labels = roles(["5.weight", "0.weight"], embedding={"0.weight"})
    assert labels == {"0.weight": "input", "5.weight": "output"} and list(labels) == ["0.weight", "5.weight"]
    assert kind_of(["0.weight", "5.weight"], {"0.weight"}) == EMBEDDING
    # a Hugging Face style tie: names that say nothing of the order
    assert roles(["lm_head.weight", "transformer.wte.weight"], {"transformer.wte.weight"}) == \
        {"transformer.wte.weight": "input", "lm_head.weight": "output"}


def test_a_cell_in_time_is_named_by_its_distance_from_the_loss():
    uses = [f"1.t{t}.weight_ih" for t in range(8)]
    labels = roles(uses)
    assert labels["1.t7.weight_ih"] == "t-0" and labels["1.t0.weight_ih"] == "t-7"
    assert list(labels.values()) == [f"t-{k}" for k in range(8)]
    assert kind_of(uses) == TIME == kind_of_roles(list(labels.values()))


def test_a_shared_block_is_numbered_by_depth_in_the_models_order():
    uses = ["10.inner.weight", "2.inner.weight", "4.inner.weight"]  # 10 after 4: numbers compared as numbers
    assert roles(uses) == {"2.inner.weight": "depth 1", "4.inner.weight": "depth 2", "10.inner.weight": "depth 3"}
    assert kind_of(uses) == DEPTH == kind_of_roles(["depth 1", "depth 2"])
    # an embedding's two uses with no other use are not an embedding tie
    assert roles(["0.weight", "3.weight"], embedding={"0.weight", "3.weight"}) == \
        {"0.weight": "depth 1", "3.weight": "depth 2"}


def test_the_roles_text_reads_back():
    groups = {"0.weight": roles(["0.weight", "5.weight"], {"0.weight"}), "2.weight": roles(["2.weight", "4.weight"])}
    text = roles_markdown(groups)
    assert text.splitlines()[:3] == ["| parameter | use | role |", "|---|---|---|", "| 0.weight | 0.weight | input |"]
    assert parse_roles_markdown(text) == groups
