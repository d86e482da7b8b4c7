"""One version, from the package metadata: printed by `ulm --version`, recorded by every store."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import zarr

import ulm
from ulm.store import Graph, write_graph


def test_version_comes_from_the_package_metadata():
    assert ulm.__version__ == version("sparse-ulm")
    run = subprocess.run([sys.executable, "-m", "ulm", "--version"], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == f"sparse-ulm {ulm.__version__}"


def test_a_store_records_the_version_that_wrote_it(tmp_path):
    import numpy as np

    graph = Graph(
        pos_um=np.array([[0, 0, 0], [0, 0, 100.0]]),
        node_diam_um=np.array([5.0, 5.0]),
        edges=np.array([[0, 1]]),
        diam_um=np.array([5.0]),
        vessel_type=np.array(["capillary"]),
    )
    write_graph(tmp_path / "graph.zarr", graph)
    assert zarr.open_group(str(tmp_path / "graph.zarr"), mode="r").attrs["ulm_version"] == ulm.__version__
