"""Our stores open in other tools: every array names its dimensions, xarray sees the grids' coordinates
in um (and s), and the density and IQ power maps are OME-Zarr images at their physical size (issue #15)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05.image import Image

from ulm.store import (
    CooWriter,
    Flow,
    Graph,
    IqWriter,
    LocalizationsWriter,
    TracksWriter,
    read_density,
    read_iq,
    write_density,
    write_flow,
    write_graph,
    write_iq_block,
)

FRAME_RATE_HZ = 500.0
# array order (z, [y,] x), um: pixel centres of index 0 and steps, deliberately all different
GRIDS = {2: ([100.0, -40.0], [12.5, 20.0]), 3: ([100.0, -50.0, 10.0], [10.0, 20.0, 5.0])}
SHAPES = {2: (4, 6), 3: (4, 3, 5)}


def _iq_attrs(dims: int) -> dict:
    origin, spacing = GRIDS[dims]
    attrs = {"origin_um": origin, "spacing_um": spacing, "f0_hz": 15e6, "wavelength_um": 100.0}
    attrs |= {"frame_rate_hz": FRAME_RATE_HZ, "probe": {"name": "test"}, "mode": "psf"}
    return attrs | ({"plane_y_um": 0.0} if dims == 2 else {})


def _iq(path: Path, dims: int) -> np.ndarray:
    """An iq store of 10 frames in blocks of 4, written as the forward stage does: some blocks in this
    process (``write``), some through the array path (``write_iq_block``, the worker processes' way)."""
    rng = np.random.default_rng(dims)
    data = (rng.standard_normal((10, *SHAPES[dims])) + 1j * rng.standard_normal((10, *SHAPES[dims]))).astype(np.complex64)
    with IqWriter(path, data.shape, 4, _iq_attrs(dims)) as writer:
        writer.write(0, data[:4])
        write_iq_block(writer.array_path, 4, data[4:8])
        writer.write(8, data[8:])
    return data


def _density(path: Path, dims: int) -> np.ndarray:
    origin, spacing = GRIDS[dims]
    density = np.arange(np.prod(SHAPES[dims]), dtype=np.float32).reshape(SHAPES[dims])
    attrs = {"origin_um": origin, "spacing_um": spacing, "factor": 8, "method": "ground_truth"}
    write_density(path, density, attrs, [np.array([0, 3]), np.array([], np.int64), np.array([5])])
    return density


def _rows_and_graphs(d: Path) -> dict[str, Path]:
    """One store of each other kind, through its writer."""
    paths = {k: d / f"{k}.zarr" for k in ("graph", "flow", "tracks", "localizations", "sparse", "target")}
    pos = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [20.0, 5.0, 5.0]])
    graph = Graph(pos, np.full(3, 4.0), np.array([[0, 1], [1, 2]]), np.array([4.0, 3.0]), np.array(["artery", "vein"]))
    write_graph(paths["graph"], graph)
    write_flow(paths["flow"], Flow(np.array([1.0, 1.0]), np.array([0.5, 0.7]), np.array([70.0, 40.0, 10.0])))
    with TracksWriter(paths["tracks"], {"frame_rate_hz": FRAME_RATE_HZ}) as w:
        w.append(np.array([0, 0, 2]), np.array([1, 2, 1]), pos, pos * 0.1)
        w.pad_frames(4)
    with LocalizationsWriter(paths["localizations"], {"frame_rate_hz": FRAME_RATE_HZ}) as w:
        w.append(np.array([1, 3]), pos[:2], np.array([0, -1]))
        w.pad_frames(4)
    with CooWriter(paths["sparse"], 4, 2, {}) as w:
        w.append(np.zeros((2, 4)), np.ones((2, 2)), [0, 0, 0, 0])
        w.append(np.ones((1, 4)), np.ones((1, 2)), [4, 0, 0, 0])
    with CooWriter(paths["target"], 3, 1, {}, kind="target") as w:
        w.append(np.zeros((2, 3)), np.ones((2, 1)), [0, 0, 0, 0])
    return paths


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("interop")
    paths = _rows_and_graphs(d)
    for dims in (2, 3):
        paths[f"iq{dims}d"], paths[f"density{dims}d"] = d / f"iq{dims}d.zarr", d / f"density{dims}d.zarr"
        _iq(paths[f"iq{dims}d"], dims)
        _density(paths[f"density{dims}d"], dims)
    return paths


def _arrays(path: Path) -> dict[str, zarr.Array]:
    members = zarr.open_group(str(path), mode="r").members(max_depth=None)
    return {name: node for name, node in members if isinstance(node, zarr.Array)}


def test_every_array_of_every_store_names_its_dimensions(stores):
    expected = {  # a few that must hold exactly these names
        ("tracks", "pos_um"): ("row", "xyz"),
        ("tracks", "frame_offsets"): ("frame_edge",),
        ("localizations", "track"): ("row",),
        ("graph", "edges/index"): ("edge", "end"),
        ("flow", "nodes/pressure_mmHg"): ("node",),
        ("sparse", "coords"): ("site", "site_axis"),
        ("target", "block_origin"): ("block", "block_axis"),
        ("iq2d", "iq"): ("t", "z", "x"),
        ("iq3d", "iq"): ("t", "z", "y", "x"),
        ("iq3d", "power"): ("z", "y", "x"),
        ("density2d", "density"): ("z", "x"),
        ("density3d", "block_sites"): ("site",),
        ("density3d", "x"): ("x",),
    }
    for kind, path in stores.items():
        arrays = _arrays(path)
        assert arrays, kind
        for name, array in arrays.items():
            names = array.metadata.dimension_names
            assert names is not None and len(names) == array.ndim and all(isinstance(n, str) and n for n in names), (kind, name)
            assert expected.get((kind, name), names) == names, (kind, name, names)
    assert "power_blocks" not in _arrays(stores["iq3d"])  # the writer's partial sums are gone


@pytest.mark.parametrize("dims", [2, 3])
def test_xarray_opens_iq_with_named_axes_and_coordinates_in_um_and_s(tmp_path, dims):
    data = _iq(tmp_path / "iq.zarr", dims)
    ds = xr.open_zarr(tmp_path / "iq.zarr", consolidated=False)
    space = ("z", "x") if dims == 2 else ("z", "y", "x")
    assert ds["iq"].dims == ("t", *space) and ds["iq"].dtype == np.complex64 and ds["power"].dims == space
    np.testing.assert_array_equal(ds["iq"].values, data)
    np.testing.assert_allclose(ds["power"].values, np.mean(np.abs(data) ** 2, axis=0), rtol=1e-5)
    origin, spacing = GRIDS[dims]
    for name, o, s, n in zip(space, origin, spacing, SHAPES[dims], strict=True):
        assert name in ds.indexes and ds[name].attrs["units"] == "um"
        np.testing.assert_allclose(ds[name].values, o + s * np.arange(n))
    np.testing.assert_allclose(ds["t"].values, np.arange(10) / FRAME_RATE_HZ)
    assert ds["t"].attrs["units"] == "s"
    # physical selection works: the pixel at z = origin + 2 dz, x = the last column
    pixel = ds["power"].sel(z=origin[0] + 2 * spacing[0], x=origin[-1] + spacing[-1] * (SHAPES[dims][-1] - 1))
    np.testing.assert_allclose(pixel.values, np.mean(np.abs(data[:, 2, ..., -1]) ** 2, axis=0), rtol=1e-5)
    read = read_iq(tmp_path / "iq.zarr")  # our reader is unchanged
    assert read.iq.shape == data.shape and read.dims == dims


@pytest.mark.parametrize("dims", [2, 3])
def test_xarray_opens_a_density_map_with_coordinates_in_um(stores, dims):
    path = stores[f"density{dims}d"]
    ds = xr.open_zarr(path, consolidated=False)
    density = read_density(path)
    space = ("z", "x") if dims == 2 else ("z", "y", "x")
    assert ds["density"].dims == space and set(space) <= set(ds.indexes)
    np.testing.assert_array_equal(ds["density"].values, density.density)
    origin, spacing = GRIDS[dims]
    for name, o, s, n in zip(space, origin, spacing, SHAPES[dims], strict=True):
        np.testing.assert_allclose(ds[name].values, o + s * np.arange(n))
        assert ds[name].attrs["units"] == "um"
    assert [b.tolist() for b in density.blocks] == [[0, 3], [], [5]]


def test_xarray_opens_row_and_graph_stores_with_named_dimensions(stores):
    tracks = xr.open_zarr(stores["tracks"], consolidated=False)
    assert tracks["pos_um"].dims == ("row", "xyz") and tracks.sizes["row"] == 3 and tracks.sizes["frame_edge"] == 5
    np.testing.assert_array_equal(tracks["frame_offsets"].values, [0, 2, 2, 3, 3])
    loc = xr.open_zarr(stores["localizations"], consolidated=False)
    assert loc["track"].dims == ("row",) and loc.sizes["row"] == 2
    edges = xr.open_zarr(stores["graph"], group="edges", consolidated=False)
    assert edges["index"].dims == ("edge", "end") and list(edges["vessel_type"].values) == ["artery", "vein"]
    assert xr.open_zarr(stores["flow"], group="nodes", consolidated=False)["pressure_mmHg"].dims == ("node",)
    sparse = xr.open_zarr(stores["sparse"], consolidated=False)
    assert sparse.sizes == {"site": 3, "site_axis": 4, "feature": 2, "block_edge": 3, "block": 2, "block_axis": 4}


def _ome(path: Path) -> tuple[dict, list]:
    """The first node the OME-Zarr reader (napari-ome-zarr's) finds at ``path``: its metadata and data levels."""
    nodes = list(Reader(parse_url(str(path)))())
    assert nodes, f"ome-zarr finds no image at {path}"
    return nodes[0].metadata, nodes[0].data


@pytest.mark.parametrize("kind", ["density2d", "density3d", "iq2d", "iq3d"])
def test_ome_zarr_reader_opens_the_maps_at_their_physical_size(stores, kind):
    dims = int(kind[-2])
    meta, levels = _ome(stores[kind])
    origin, spacing = GRIDS[dims]
    scale, translation = meta["coordinateTransformations"][0]
    assert [a["name"] for a in meta["axes"]] == (["z", "x"] if dims == 2 else ["z", "y", "x"])
    assert {a["type"] for a in meta["axes"]} == {"space"} and {a["unit"] for a in meta["axes"]} == {"micrometer"}
    assert len(levels) == 1 and levels[0].shape == SHAPES[dims]
    # physical extent: scale x shape = spacing x pixels, in um; translation = the centre of pixel 0
    np.testing.assert_allclose(np.multiply(scale["scale"], levels[0].shape), np.multiply(spacing, SHAPES[dims]))
    np.testing.assert_allclose(translation["translation"], origin)
    expected = read_density(stores[kind]).density if kind.startswith("density") else zarr.open_array(stores[kind] / "power")[:]
    np.testing.assert_array_equal(np.asarray(levels[0]), expected)
    image = Image.from_zarr(zarr.open_group(str(stores[kind]), mode="r"))  # valid NGFF 0.5 (ome-zarr-models)
    assert image.attributes.ome.version == "0.5"


def test_images_copy_no_ome_attr_into_stores_derived_from_them(stores, tmp_path):
    """A stage that copies the iq attrs (conventional does) must not claim an image it does not hold."""
    attrs = zarr.open_group(str(stores["iq2d"]), mode="r").attrs.asdict()
    with LocalizationsWriter(tmp_path / "loc.zarr", attrs) as w:
        w.pad_frames(2)
    assert "ome" not in zarr.open_group(str(tmp_path / "loc.zarr"), mode="r").attrs
    assert not list(Reader(parse_url(str(tmp_path / "loc.zarr")))())


def test_opening_any_store_warns_nothing(stores):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind, path in stores.items():
            for group in [None, "nodes", "edges"] if kind in ("graph", "flow") else [None]:
                xr.open_zarr(path, group=group, consolidated=False).load()
            for array in _arrays(path).values():
                array[...]
            if kind.startswith(("iq", "density")):
                _ome(path)


def test_forward_stage_iq_shows_the_bubble_at_its_position_in_um(tmp_path):
    """A real `ulm forward` run (blocks written by its workers): xarray and the OME-Zarr reader place the
    brightest power pixel where the one still microbubble is, in um."""
    from ulm.cli import main

    with TracksWriter(tmp_path / "tracks.zarr", {"frame_rate_hz": FRAME_RATE_HZ, "bbox_um": [0.0, 600.0] * 3}) as w:
        w.append(np.arange(8), np.zeros(8), np.tile([300.0, 300.0, 300.0], (8, 1)), np.zeros((8, 3)))
    args = ["forward", "--quiet", "--set", "forward.snr_db=null", "--set", "forward.block_frames=4"]
    assert main([*args, str(tmp_path / "tracks.zarr"), str(tmp_path / "iq.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "iq.zarr", consolidated=False)
    np.testing.assert_allclose(ds["power"].values, np.mean(np.abs(read_iq(tmp_path / "iq.zarr").iq[:]) ** 2, axis=0), rtol=1e-5)
    power = ds["power"].load()
    where = power.argmax(dim=["z", "x"])
    peak_um = [float(power[d][where[d]]) for d in ("z", "x")]
    spacing = np.asarray(ds.attrs["spacing_um"])
    assert np.all(np.abs(np.subtract(peak_um, 300.0)) <= spacing), (peak_um, spacing)
    meta, levels = _ome(tmp_path / "iq.zarr")
    k = np.unravel_index(np.argmax(np.asarray(levels[0])), levels[0].shape)
    scale, translation = meta["coordinateTransformations"][0]
    np.testing.assert_allclose(np.add(translation["translation"], np.multiply(scale["scale"], k)), peak_um)


def test_stores_written_before_dimension_names_and_images_still_read(tmp_path):
    """The layout of earlier versions (no dimension names, no coordinates, no ``ome`` attr, no power map)."""
    density = zarr.open_group(str(tmp_path / "density.zarr"), mode="w", zarr_format=3)
    density.attrs.update({"origin_um": [0.0, 0.0], "spacing_um": [5.0, 5.0], "factor": 8, "method": "m", "ulm_kind": "density"})
    density.create_array("density", data=np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(read_density(tmp_path / "density.zarr").density, np.eye(3))
    iq = zarr.open_group(str(tmp_path / "iq.zarr"), mode="w", zarr_format=3)
    iq.attrs.update({**_iq_attrs(2), "ulm_kind": "iq"})
    iq.create_array("iq", data=np.ones((2, *SHAPES[2]), np.complex64))
    assert read_iq(tmp_path / "iq.zarr").iq[:].shape == (2, *SHAPES[2])
    assert not list(Reader(parse_url(str(tmp_path / "density.zarr")))())  # other tools see no image there
