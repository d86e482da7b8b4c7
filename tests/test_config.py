"""The one schema: complete documentation of every key, defaults, and clear rejections."""

from pathlib import Path

import pytest
import yaml

from ulm.config import apply_overrides, check_disjoint_test_graph, derive_seed, load_config, schema, validate_config
from ulm.errors import UlmError

ROOT = Path(__file__).resolve().parents[1]


def _leaves(node, path=""):
    for key, sub in node.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            yield from _leaves(sub, f"{path}{key}.")
        else:
            yield f"{path}{key}", sub


def test_every_key_has_type_default_unit_and_one_line_description():
    leaves = dict(_leaves(schema()))
    assert len(leaves) > 20
    for key, sub in leaves.items():
        for field in ("type", "default", "unit", "description", "x-stages"):
            assert field in sub, f"{key} lacks {field}"
        assert isinstance(sub["x-stages"], list), key  # the workflow rules whose outputs depend on the key
        assert sub.get("x-split") in (None, "train", "test"), key
        assert "\n" not in sub["description"].strip(), key


def test_workflow_schema_is_the_package_schema():
    linked = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    assert yaml.safe_load(linked.read_text()) == schema()


def test_default_config_file_is_valid_and_matches_schema_defaults():
    cfg = load_config(ROOT / "config.yaml")
    assert cfg == validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    assert cfg["bubbles"]["frame_rate_hz"] == 1000.0
    assert load_config()["flow"]["mode"] == "poiseuille"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["flow.presure_artery_mmHg=3"], "flow"),
        (["flow.hematocrit=abc"], "flow.hematocrit"),
        (["bubbles.n_frames=-5"], "bubbles.n_frames"),
        (["flow.mode=darcy"], "flow.mode"),
        (["nonsense=1"], "nonsense"),
        (["graph.crop_um=[1, 2]"], "graph.crop_um"),
    ],
)
def test_bad_keys_and_values_are_named(overrides, needle):
    with pytest.raises(UlmError, match=needle.replace(".", r"\.")):
        load_config(overrides=overrides)


def test_unknown_key_message_lists_it():
    with pytest.raises(UlmError, match="presure_artery_mmHg"):
        load_config(overrides=["flow.presure_artery_mmHg=3"])


def test_overrides_set_keys_and_whole_sections():
    cfg = apply_overrides({}, ["flow.hematocrit=0.4", 'graph={"merge_tol_um": 2}', "concentrations=[1, 5]"])
    assert cfg == {"flow": {"hematocrit": 0.4}, "graph": {"merge_tol_um": 2}, "concentrations": [1, 5]}
    with pytest.raises(UlmError, match="expected section.key=value"):
        apply_overrides({}, ["flow.hematocrit"])


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "bubbles", 10) == derive_seed(0, "bubbles", 10)
    assert len({derive_seed(0, "bubbles", c) for c in (1, 5, 10, 20)} | {derive_seed(1, "bubbles", 10)}) == 5
    assert 0 <= derive_seed(0, "x") < 2**63


def test_numbers_given_as_text_are_parsed_but_bad_text_is_still_rejected():
    cfg = validate_config({"bubbles": {"n_frames": "8192"}, "dims": "[2, 3]"})
    assert cfg["bubbles"]["n_frames"] == 8192 and cfg["dims"] == [2, 3]
    with pytest.raises(UlmError, match="bubbles.n_frames"):
        validate_config({"bubbles": {"n_frames": "many"}})


BOX_A, BOX_B = [0, 100, 0, 100, 0, 100], [100, 200, 0, 100, 0, 100]  # touching faces share no volume


@pytest.mark.parametrize(
    ("graph", "ok"),
    [
        ({"source": "bundled:mouse_20120409", "test_source": "bundled:mouse_20100203"}, True),
        ({"source": "synthetic", "test_source": "synthetic"}, True),  # each split draws its own graph
        ({"source": "bundled:mouse_20120409", "test_source": "bundled:mouse_20120409"}, False),
        ({"source": "a.swc", "test_source": "./a.swc", "crop_um": BOX_A, "test_crop_um": BOX_B}, True),
        ({"source": "a.swc", "test_source": "./a.swc", "crop_um": BOX_A, "test_crop_um": [50, 150, 0, 100, 0, 100]}, False),
        ({"source": "a.swc", "test_source": "a.swc", "crop_um": BOX_A, "test_crop_um": None}, False),
    ],
)
def test_test_graph_must_be_disjoint_from_the_training_graph(graph, ok):
    graph = {"crop_um": None, "test_crop_um": None, **graph}
    if ok:
        check_disjoint_test_graph(graph)
    else:
        with pytest.raises(UlmError, match="is also the training graph"):
            check_disjoint_test_graph(graph)


def test_resources_have_one_default_per_rule_group():
    resources = load_config()["resources"]
    assert set(resources) == {"simulation", "imaging", "network", "evaluation", "memory", "memory_quick"}
    assert all(group["mem_mb"] > 0 and group["runtime"] > 0 for group in resources.values())
    with pytest.raises(UlmError, match="resources.network.mem_mb"):
        load_config(overrides=["resources.network.mem_mb=0"])
