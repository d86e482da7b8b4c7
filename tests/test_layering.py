"""The house has one direction (docs/architecture.md, "Modules"): stages import only the ground floor (and
their own package), the floor imports no stage, nothing imports in a cycle, no module is over 400 lines,
and importing ulm leaves matplotlib's backend alone."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ulm"
MAX_LINES = 400
FLOOR = ["ulm.errors", "ulm.progress", "ulm.parallel", "ulm.config", "ulm.store", "ulm.imaging", "ulm.nn", "ulm.plots"]
FLOOR += ["ulm.results"]
STAGES = ["ulm.bubbles", "ulm.flow", "ulm.vascular", "ulm.forward", "ulm.sparse", "ulm.mask", "ulm.targets", "ulm.train"]
STAGES += ["ulm.infer", "ulm.conventional", "ulm.render", "ulm.metrics", "ulm.claims", "ulm.summary"]
TOP = ("ulm.cli", "ulm.commands", "ulm.__main__")  # the command line: may import every stage


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The ulm modules (or packages) that module ``name`` imports, at any depth, relative imports resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from ulm import claims` imports the module ulm.claims
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    return {m for m in found if m == "ulm" or m.startswith("ulm.")}


GRAPH = {name: imports_of(name) for name in MODULES}


def group_of(name: str) -> str | None:
    """The floor package or stage a module belongs to ("ulm" itself: the version, on the floor)."""
    for group in (*FLOOR, *STAGES, *TOP):
        if name == group or name.startswith(group + "."):
            return group
    return "ulm" if name == "ulm" else None


def test_every_module_is_placed():
    assert [name for name in MODULES if group_of(name) is None] == []


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path):
    assert "ulm.plots" in GRAPH["ulm.train"]  # imported inside finish()
    assert "ulm.nn.mask_net" in GRAPH["ulm.sparse"]  # imported inside functions
    assert {"ulm.conventional.detect", "ulm.conventional.track"} <= GRAPH["ulm.conventional.stage"]


def wrong_imports(name: str, graph: dict[str, set[str]]) -> list[str]:
    """What module ``name`` imports against the layering: a stage anything but the floor and its own
    package, a floor module any stage (the top may import anything)."""
    own = group_of(name)
    allowed = (*FLOOR, "ulm", own) if own in STAGES else (*FLOOR, "ulm") if own in FLOOR else None
    return [] if allowed is None else sorted(m for m in graph[name] if group_of(m) not in allowed)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> imported modules) as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph.get(name, ())):
            if dep not in graph or dep == name:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[name] = 2
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


@pytest.mark.parametrize("name", [m for m in MODULES if group_of(m) in STAGES])
def test_a_stage_imports_only_the_floor_and_its_own_package(name):
    wrong = wrong_imports(name, GRAPH)
    assert wrong == [], f"{name} imports {wrong}: move what they share down to the floor"


@pytest.mark.parametrize("name", [m for m in MODULES if group_of(m) in FLOOR])
def test_the_floor_imports_no_stage(name):
    wrong = wrong_imports(name, GRAPH)
    assert wrong == [], f"{name} imports {wrong}"


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


def test_no_module_over_400_lines():
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checks_catch_a_stage_import_a_floor_import_and_a_cycle():
    """The checks are not vacuous: made-up wrong imports and a made-up cycle are seen, allowed ones are not."""
    graph = {
        "ulm.metrics": {"ulm.render", "ulm.store", "ulm.imaging.density"},  # stage -> stage: wrong
        "ulm.render": {"ulm.imaging.raster"},
        "ulm.imaging.raster": {"ulm.targets"},  # floor -> stage: wrong
        "ulm.targets": {"ulm.imaging.raster"},  # with the line above: a cycle
        "ulm.conventional.stage": {"ulm.conventional.track", "ulm.nn.data"},  # own package and floor: fine
        "ulm.claims.figures": {"ulm.claims.verdicts", "ulm.results"},  # its own package: fine
        "ulm.cli": {"ulm.render", "ulm.metrics"},  # the top: fine
    }
    assert wrong_imports("ulm.metrics", graph) == ["ulm.render"]
    assert wrong_imports("ulm.imaging.raster", graph) == ["ulm.targets"]
    assert [wrong_imports(m, graph) for m in ("ulm.conventional.stage", "ulm.claims.figures", "ulm.cli")] == [[], [], []]
    assert find_cycle(graph) == ["ulm.imaging.raster", "ulm.targets", "ulm.imaging.raster"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_has_no_stage_to_stage_edge_left_from_before():
    """The imports issue #15 listed are gone (a stage reaching into another stage, at any depth)."""
    before = ["claims>metrics", "conventional.stage>forward.realism", "infer>train", "mask>sparse"]
    before += ["sparse>mask", "metrics>render", "render>conventional", "render>targets", "summary>metrics", "targets>sparse"]
    before += ["train>sparse", "flow>vascular"]
    before = [tuple(f"ulm.{m}" for m in edge.split(">")) for edge in before]
    assert [(a, b) for a, b in before if b in GRAPH[a]] == []


def test_importing_ulm_keeps_the_matplotlib_backend():
    """Every module imported after choosing the svg backend (as Jupyter or napari choose theirs): the backend
    is still svg (pyplot is never needed: figures are matplotlib.figure.Figure, saved through ulm.store)."""
    names = sorted(m for m in MODULES if m != "ulm.__main__")
    code = (
        "import importlib, matplotlib; matplotlib.use('svg'); "
        f"[importlib.import_module(m) for m in {names!r}]; "
        "import sys; print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["svg", "False"]


def test_figures_are_written_without_pyplot(tmp_path):
    """A stage's figure is a matplotlib.figure.Figure saved atomically: a PNG appears, no .tmp is left."""
    from matplotlib.figure import Figure

    from ulm.store import save_figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


# ------------------------------------------------------------------------------ one writer per file kind
def test_write_csv_and_json_write_what_the_hand_written_copies_did(tmp_path):
    import csv
    import json

    from ulm.store import transaction, write_csv, write_json

    rows = [{"a": 1, "b": 0.5, "c": "x"}, {"a": 2, "b": float("nan"), "c": None}]
    write_csv(tmp_path / "t.csv", rows)
    with open(tmp_path / "ref.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert (tmp_path / "t.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    write_csv(tmp_path / "some.csv", iter(rows), ["c", "a"], extrasaction="ignore")
    assert (tmp_path / "some.csv").read_text().splitlines() == ["c,a", "x,1", ",2"]
    write_json(tmp_path / "m.json", {"x": [1, 2]}, indent=1)
    assert (tmp_path / "m.json").read_text() == json.dumps({"x": [1, 2]}, indent=1)
    with pytest.raises(RuntimeError), transaction():  # a failed stage leaves the old file and no .tmp
        write_json(tmp_path / "m.json", {"x": 3})
        raise RuntimeError
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "ref.csv", "some.csv", "t.csv"]


def test_save_torch_writes_at_once_or_with_the_transaction(tmp_path):
    import torch

    from ulm.store import save_torch, transaction

    with pytest.raises(RuntimeError), transaction():
        save_torch({"w": torch.ones(2)}, tmp_path / "last.pt", now=True)  # at once: survives the failure
        save_torch({"w": torch.ones(2)}, tmp_path / "model.pt")  # with the stage: gone with it
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["w"], torch.ones(2))
