"""Shared fixtures: small hand-made graphs with analytic flow answers, and the graph files."""

from pathlib import Path

import numpy as np
import pytest

from ulm.config import load_config
from ulm.store import Graph

SHARED_GRAPHS = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "vascular").glob("*.mat"))
BUNDLED = ["bundled:mouse_20120409", "bundled:mouse_20100203"]


@pytest.fixture
def cfg() -> dict:
    """The default configuration (schema defaults)."""
    return load_config()


def make_graph(pos, edges, diam, types) -> Graph:
    pos = np.asarray(pos, dtype=float)
    return Graph(
        pos, np.full(len(pos), float(np.max(diam))), np.asarray(edges, dtype=np.int64), np.asarray(diam, float), np.asarray(types)
    )


def tube(length_um: float = 200.0, diam_um: float = 10.0) -> Graph:
    """One straight vessel along x, artery inlet at x=0, vein outlet at x=length (two edges)."""
    pos = [[0, 0, 100], [length_um / 2, 0, 100], [length_um, 0, 100]]
    return make_graph(pos, [[0, 1], [1, 2]], [diam_um, diam_um], ["artery", "vein"])


def bifurcation(d_a: float, l_a: float, d_b: float, l_b: float, d0: float = 12.0) -> Graph:
    """Inlet 0 -> junction 1 -> outlets 2 (daughter a) and 3 (daughter b), all ends open."""
    pos = [[0, 0, 0], [100, 0, 0], [100 + l_a * 0.8, l_a * 0.6, 0], [100 + l_b * 0.8, -l_b * 0.6, 0]]
    return make_graph(pos, [[0, 1], [1, 2], [1, 3]], [d0, d_a, d_b], ["artery", "vein", "vein"])


@pytest.fixture(scope="module")
def nn_stores(tmp_path_factory) -> tuple[Path, dict]:
    """(folder, config): 8 blocks of 256 frames of 2D PSF-mode IQ from the bundled graph, sparsified, with
    targets: tracks.zarr, iq.zarr, sparse.zarr, target.zarr."""
    from ulm.bubbles import simulate_tracks
    from ulm.flow import solve_flow
    from ulm.forward.simulate import simulate_iq
    from ulm.sparse import sparsify_iq
    from ulm.targets import make_targets
    from ulm.vascular import build_graph

    root = tmp_path_factory.mktemp("nn")
    cfg = load_config(overrides=["bubbles.n_frames=2048", "sparse.block_frames=256"])
    graph = build_graph("bundled:mouse_20120409", cfg["graph"])
    simulate_tracks(graph, solve_flow(graph, cfg["flow"]), cfg["bubbles"], 1, path=root / "tracks.zarr", progress=False)
    simulate_iq(root / "tracks.zarr", root / "iq.zarr", cfg, 2, 0, progress=False)
    sparsify_iq(root / "iq.zarr", root / "sparse.zarr", cfg["sparse"], progress=False)
    make_targets(root / "tracks.zarr", root / "iq.zarr", root / "target.zarr", cfg["sparse"], progress=False)
    return root, cfg
