"""The data contract in code: one typed reader and one atomic writer per Zarr store kind.

No other module opens Zarr by hand. Every output is written to ``<path>.tmp`` and moved into place
only when its stage has succeeded (all the stage's outputs together, see :func:`transaction`); every
store records its kind, manifest and content digest. See docs/architecture.md, "Stores" and
"Nothing is lost".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

import ulm
from ulm.errors import UlmError

COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
VESSEL_TYPES = ("artery", "capillary", "vein", "unknown")
STORE_KINDS = ("graph", "flow", "tracks", "iq", "sparse", "target", "pred", "localizations", "density")

_staged: list[tuple[Path, Path]] | None = None  # (temporary, final) paths of the open transaction


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Every output written through :func:`atomic_path` inside the block replaces its previous version
    only when the whole block succeeds, all together; on failure every old output stays as it was."""
    global _staged
    outer, _staged = _staged, []
    try:
        yield
    except BaseException:
        for tmp, _ in _staged:
            remove_path(tmp)
        raise
    else:
        if outer is not None:
            outer.extend(_staged)
        else:
            for tmp, path in _staged:
                _replace(tmp, path)
    finally:
        _staged = outer


def staged(path: str | Path) -> Path:
    """Where ``path`` is right now: its temporary sibling while the transaction that wrote it is open."""
    path = Path(path)
    for tmp, final in _staged or ():
        if final == path:
            return tmp
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, now: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; it replaces ``path`` only if the block succeeds: at once when no
    :func:`transaction` is open (or ``now``), else when the transaction ends."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    remove_path(tmp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    if _staged is None or now:
        _replace(tmp, path)
    else:
        _staged[:] = [(t, p) for t, p in _staged if p != path] + [(tmp, path)]


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` onto ``path``; an old directory is moved aside first and deleted only afterwards."""
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(path.name + ".old")
        remove_path(old)
        os.replace(path, old)
        os.replace(tmp, path)
        remove_path(old)
    else:
        os.replace(tmp, path)


def remove_path(path: Path) -> None:
    """Delete a file, link or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _new_group(path: Path, kind: str, attrs: dict) -> zarr.Group:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    own = {"ulm_version": ulm.__version__, "ulm_kind": kind}  # never the copied attrs of another store
    group.attrs.update({**{k: v for k, v in attrs.items() if k not in ("ulm_manifest", "ulm_digest")}, **own})
    return group


def _put(group: zarr.Group, name: str, data: np.ndarray, chunk_rows: int = 1 << 18) -> None:
    data = np.asarray(data)
    chunks = (max(1, min(len(data), chunk_rows)),) + data.shape[1:] if data.ndim else ()
    if data.dtype.kind in "UO":
        group.create_array(name, shape=data.shape, dtype=str, chunks=chunks)[:] = data.astype(object)
    else:
        group.create_array(name, data=data, chunks=chunks, compressors=COMPRESSOR)


def _chunk_files(root: Path) -> dict[str, list[Path]]:
    """Array name (relative to the store) -> its chunk files (every file under the array's ``c/``)."""
    out = {}
    for meta in root.rglob("zarr.json"):
        chunks = meta.parent / "c"
        try:
            is_array = chunks.is_dir() or json.loads(meta.read_text()).get("node_type") == "array"
        except ValueError:  # a garbled header: zarr itself names it when the array is opened
            is_array = False
        if is_array:
            out[meta.parent.relative_to(root).as_posix()] = sorted(p for p in chunks.rglob("*") if p.is_file())
    return out


def _seal(root: Path) -> None:
    """Record what the finished store at ``root`` holds: ``ulm_manifest`` (per array, its number of chunk
    files and their bytes, so a reader can tell a store that lost or cut chunks) and ``ulm_digest``
    (sha256 of the arrays' metadata and chunks, the store's content identity)."""
    digest, manifest = hashlib.sha256(), {}
    for name, files in sorted(_chunk_files(root).items()):
        manifest[name] = [len(files), sum(f.stat().st_size for f in files)]
        digest.update(name.encode() + (root / name / "zarr.json").read_bytes())
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + hashlib.sha256(file.read_bytes()).digest())
    group = zarr.open_group(str(root), mode="r+")
    group.attrs.update({"ulm_manifest": manifest, "ulm_digest": digest.hexdigest()})


@contextlib.contextmanager
def _store(path: str | Path, kind: str, attrs: dict) -> Iterator[zarr.Group]:
    """A new store of ``kind`` written at a temporary path, sealed and moved into place on success."""
    with atomic_path(path) as tmp:
        group = _new_group(tmp, kind, attrs)
        yield group
        _seal(tmp)


def store_digest(path: str | Path) -> str:
    """The content digest of a store: the one its writer recorded, else computed now."""
    attrs = zarr.open_group(str(path), mode="r").attrs
    if "ulm_digest" not in attrs:
        return hashlib.sha256(json.dumps(_chunk_digests(Path(path)), sort_keys=True).encode()).hexdigest()
    return str(attrs["ulm_digest"])


def _chunk_digests(root: Path) -> dict[str, str]:
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(root.rglob("*"))
            if f.is_file() and f.name != ".snakemake_timestamp"}  # fmt: skip


def _check_manifest(path: Path, kind: str, attrs: dict) -> None:
    """Compare the chunk files on disk with the writer's ``ulm_manifest`` (stores without one pass)."""
    manifest = attrs.get("ulm_manifest")
    if not isinstance(manifest, dict):
        return  # written before manifests (or by another tool): nothing to compare with
    present = _chunk_files(path)
    for name, expected in manifest.items():
        if not (isinstance(expected, list) and len(expected) == 2):
            continue  # an older manifest format
        (n_files, n_bytes), files = expected, present.get(name, [])
        found = sum(f.stat().st_size for f in files)
        if len(files) != n_files or found != n_bytes:
            raise UlmError(f"{kind} store {path}: array {name} has {len(files)} chunk files of {found} bytes, its writer "
                           f"left {n_files} of {n_bytes} bytes (damaged store: rerun the stage that wrote it)")  # fmt: skip


def _open(path: str | Path, kind: str, arrays: tuple[str, ...]) -> zarr.Group:
    path = Path(path)
    if not path.exists():
        raise UlmError(f"{kind} store {path}: not found")
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:  # zarr raises several types for a non-store directory
        raise UlmError(f"{kind} store {path}: not a Zarr group ({type(exc).__name__})") from None
    if attrs.get("ulm_kind", kind) != kind:
        raise UlmError(f"{kind} store {path}: this is a {attrs['ulm_kind']} store, expected a {kind} store")
    missing = [a for a in arrays if a not in group]
    if missing:
        raise UlmError(f"{kind} store {path}: missing array(s) {missing}; is this a {kind}.zarr?")
    _check_manifest(path, kind, attrs)
    return group


# ----------------------------------------------------------------------------------- output safety
def store_kind(path: str | Path) -> str | None:
    """The kind of the sparse-ulm store at ``path`` (from its attrs, else from its arrays), or None."""
    path = Path(path)
    if not (path.is_dir() and (path / "zarr.json").is_file()):
        return None
    try:
        group = zarr.open_group(str(path), mode="r")
        kind = group.attrs.get("ulm_kind")
        if kind in STORE_KINDS:
            return kind
        layouts = {"graph": GRAPH_ARRAYS, "flow": FLOW_ARRAYS, "tracks": TRACK_ARRAYS, "iq": ("iq",),
                   "sparse": COO_ARRAYS, "localizations": LOC_ARRAYS, "density": ("density",)}  # fmt: skip
        return next((k for k, arrays in layouts.items() if all(a in group for a in arrays)), None)
    except Exception:  # anything zarr cannot open is not one of ours
        return None


def check_output(path: str | Path, kind: str, inputs: list[Path] = ()) -> None:
    """Refuse an OUTPUT that would destroy what the stage did not write: an input (or a folder holding
    one), an existing directory that is not a store of this ``kind``, or a non-regular file.

    ``kind``: a store kind of :data:`STORE_KINDS`; ``density-folder`` (a folder of density stores and
    PNGs); or ``file`` (a regular file such as model.pt, metrics.json or a PNG)."""
    path = Path(path)
    where = path.resolve()
    for src in map(Path, inputs):
        src = src.resolve()
        if where == src or where in src.parents or src in where.parents:
            raise UlmError(f"output {path}: is (or holds, or lies inside) the input {src}; choose another output path")
    if not (path.exists() or path.is_symlink()):
        return
    if kind == "file":
        ok = path.is_file()
    elif kind == "density-folder":
        ok = path.is_dir() and all(_is_rendered(p) for p in path.iterdir())
    else:
        ok = store_kind(path) in ({kind, "sparse"} if kind in ("target", "pred") else {kind})  # older COO stores: no kind
    if not ok:
        what = {"file": "a regular file", "density-folder": "a folder written by `ulm render`"}.get(kind, f"a {kind} store")
        raise UlmError(f"output {path}: exists and is not {what}; refusing to replace it (move it away or choose another path)")


def _is_rendered(p: Path) -> bool:
    """Whether ``p`` is something `ulm render` writes into its folder (or Snakemake's timestamp)."""
    if p.name == ".snakemake_timestamp" or (p.suffix == ".png" and p.is_file()):
        return True
    return p.suffix == ".zarr" and store_kind(p) == "density"


# ----------------------------------------------------------------------------------------- graph
@dataclass
class Graph:
    """A vascular graph in the world frame (um, z = depth).

    Attributes
    ----------
    pos_um : (N, 3) float64 node positions (x, y, z).
    node_diam_um : (N,) float64 node diameters.
    edges : (E, 2) int64 0-based node indices.
    diam_um : (E,) float64 edge (lumen) diameters.
    vessel_type : (E,) str, one of ``VESSEL_TYPES``.
    """

    pos_um: np.ndarray
    node_diam_um: np.ndarray
    edges: np.ndarray
    diam_um: np.ndarray
    vessel_type: np.ndarray
    attrs: dict = field(default_factory=dict)

    @property
    def length_um(self) -> np.ndarray:
        """(E,) float64 straight edge lengths."""
        return np.linalg.norm(self.pos_um[self.edges[:, 1]] - self.pos_um[self.edges[:, 0]], axis=1)

    @property
    def n_nodes(self) -> int:
        return len(self.pos_um)

    def degree(self) -> np.ndarray:
        """(N,) number of edges touching each node."""
        return np.bincount(self.edges.ravel(), minlength=self.n_nodes)


GRAPH_ARRAYS = ("nodes/pos_um", "nodes/diam_um", "edges/index", "edges/diam_um", "edges/length_um", "edges/vessel_type")


def write_graph(path: str | Path, graph: Graph, attrs: dict | None = None) -> None:
    """Write ``graph.zarr`` atomically."""
    with _store(path, "graph", {**graph.attrs, **(attrs or {})}) as g:
        _put(g, "nodes/pos_um", graph.pos_um.astype(np.float64))
        _put(g, "nodes/diam_um", graph.node_diam_um.astype(np.float64))
        _put(g, "edges/index", graph.edges.astype(np.int64))
        _put(g, "edges/diam_um", graph.diam_um.astype(np.float64))
        _put(g, "edges/length_um", graph.length_um)
        _put(g, "edges/vessel_type", np.asarray(graph.vessel_type, dtype=str))


def _which(bad: np.ndarray, what: str) -> tuple[str, str]:
    """``what k`` (the first True of ``bad``) and how many there are when more than one, for a message."""
    where = np.flatnonzero(bad)
    return f"{what} {int(where[0])}", f" ({len(where)} {what}s in all)" if len(where) > 1 else ""


def check_graph(graph: Graph, where: str) -> None:
    """Raise UlmError (``where``: e.g. ``graph file x.swc``) unless the graph's arrays have matching lengths,
    finite positions, positive finite diameters (um), edges between existing nodes and known vessel types."""
    pos, ndiam, edges = np.asarray(graph.pos_um), np.asarray(graph.node_diam_um), np.asarray(graph.edges)
    diam, vtype = np.asarray(graph.diam_um), np.asarray(graph.vessel_type)
    if pos.ndim != 2 or pos.shape[1:] != (3,) or pos.dtype.kind not in "fiu":
        raise UlmError(f"{where}: node positions must be (N, 3) numbers in um, got {pos.dtype} {pos.shape}")
    n = len(pos)
    if ndiam.shape != (n,) or ndiam.dtype.kind not in "fiu":
        raise UlmError(f"{where}: node diameters must be ({n},) numbers, one per node, got {ndiam.dtype} {ndiam.shape}")
    if edges.ndim != 2 or edges.shape[1:] != (2,) or (edges.size and edges.dtype.kind not in "iu"):
        raise UlmError(f"{where}: edges must be (E, 2) node indices, got {edges.dtype} {edges.shape}")
    e = len(edges)
    if diam.shape != (e,) or diam.dtype.kind not in "fiu" or vtype.shape != (e,):
        raise UlmError(f"{where}: {e} edges but {diam.shape} edge diameters and {vtype.shape} vessel types (one each expected)")
    bad = ~np.all(np.isfinite(pos), axis=1)
    if bad.any():
        first, more = _which(bad, "node")
        raise UlmError(f"{where}: {first} position is not finite{more}")
    for values, what in ((ndiam, "node"), (diam, "edge")):
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            value = float(values[np.flatnonzero(bad)[0]])
            first, more = _which(bad, what)
            raise UlmError(f"{where}: {first} diameter is {value}{more}; expected a positive finite number (um)")
    outside = np.any((edges < 0) | (edges >= n), axis=1)
    if outside.any():
        raise UlmError(f"{where}: {int(outside.sum())} edges reference nodes outside 0..{n - 1}")
    unknown = sorted(set(vtype.tolist()) - set(VESSEL_TYPES))
    if unknown:
        raise UlmError(f"{where}: unknown vessel types {unknown}; expected {list(VESSEL_TYPES)}")


def read_graph(path: str | Path) -> Graph:
    """Read ``graph.zarr`` (validated: see :func:`check_graph`)."""
    g = _open(path, "graph", GRAPH_ARRAYS)
    graph = Graph(
        pos_um=g["nodes/pos_um"][:],
        node_diam_um=g["nodes/diam_um"][:],
        edges=g["edges/index"][:],
        diam_um=g["edges/diam_um"][:],
        vessel_type=np.asarray(g["edges/vessel_type"][:].astype(object), dtype="U9"),
        attrs=g.attrs.asdict(),
    )
    check_graph(graph, f"graph store {path}")
    return graph


# ------------------------------------------------------------------------------------------ flow
@dataclass
class Flow:
    """Steady flow on a graph's edges.

    flow_um3_s : (E,) signed volume flow, positive from ``edges[:, 0]`` to ``edges[:, 1]``.
    v_mean_mm_s : (E,) signed cross-section mean velocity, same sign convention.
    pressure_mmHg : (N,) node pressures.
    """

    flow_um3_s: np.ndarray
    v_mean_mm_s: np.ndarray
    pressure_mmHg: np.ndarray
    attrs: dict = field(default_factory=dict)


FLOW_ARRAYS = ("edges/flow_um3_s", "edges/v_mean_mm_s", "nodes/pressure_mmHg")


def write_flow(path: str | Path, flow: Flow, attrs: dict | None = None) -> None:
    """Write ``flow.zarr`` atomically."""
    with _store(path, "flow", {**flow.attrs, **(attrs or {})}) as g:
        _put(g, "edges/flow_um3_s", flow.flow_um3_s.astype(np.float64))
        _put(g, "edges/v_mean_mm_s", flow.v_mean_mm_s.astype(np.float64))
        _put(g, "nodes/pressure_mmHg", flow.pressure_mmHg.astype(np.float64))


def read_flow(path: str | Path, graph: Graph | None = None, graph_path: str | Path | None = None) -> Flow:
    """Read ``flow.zarr`` (validated: one finite value per edge and per node; with ``graph``, the edges and
    nodes of that graph, read from ``graph_path``)."""
    g = _open(path, "flow", FLOW_ARRAYS)
    flow = Flow(g["edges/flow_um3_s"][:], g["edges/v_mean_mm_s"][:], g["nodes/pressure_mmHg"][:], g.attrs.asdict())
    for name, data in zip(FLOW_ARRAYS, (flow.flow_um3_s, flow.v_mean_mm_s, flow.pressure_mmHg), strict=True):
        if data.ndim != 1 or data.dtype.kind != "f":
            raise UlmError(f"flow store {path}: {name} must be (n,) floating point, got {data.dtype} {data.shape}")
        bad = ~np.isfinite(data)
        if bad.any():
            first, more = _which(bad, "index")
            raise UlmError(f"flow store {path}: {name} holds non-finite values at {first}{more}")
    if flow.flow_um3_s.shape != flow.v_mean_mm_s.shape:
        raise UlmError(f"flow store {path}: {len(flow.flow_um3_s)} edge flows but {len(flow.v_mean_mm_s)} edge velocities")
    if graph is not None and (len(flow.flow_um3_s), len(flow.pressure_mmHg)) != (len(graph.edges), graph.n_nodes):
        raise UlmError(f"flow store {path}: {len(flow.flow_um3_s)} edges and {len(flow.pressure_mmHg)} nodes, but graph "
                       f"{graph_path or 'store'} has {len(graph.edges)} and {graph.n_nodes}: from another graph?")  # fmt: skip
    return flow


# ---------------------------------------------------------------------------------------- tracks
TRACK_ARRAYS = ("frame", "bubble", "pos_um", "vel_mm_s", "frame_offsets")


class _FrameIndexed:
    """Rows sorted by frame with ``frame_offsets`` (T+1,): rows of frame t are [off[t], off[t+1])."""

    frame_offsets: np.ndarray

    @property
    def n_frames(self) -> int:
        return len(self.frame_offsets) - 1

    def rows(self, t: int) -> slice:
        """Row slice of frame ``t``."""
        return slice(int(self.frame_offsets[t]), int(self.frame_offsets[t + 1]))


@dataclass
class Tracks(_FrameIndexed):
    """Ground-truth microbubble positions, sorted by frame.

    frame : (M,) int32; bubble : (M,) int64 id; pos_um : (M, 3) float32 (x, y, z);
    vel_mm_s : (M, 3) float32; frame_offsets : (T+1,) int64, rows of frame t are [off[t], off[t+1]).
    """

    frame: np.ndarray
    bubble: np.ndarray
    pos_um: np.ndarray
    vel_mm_s: np.ndarray
    frame_offsets: np.ndarray
    attrs: dict = field(default_factory=dict)


class _StreamingStore:
    """A store of kind ``KIND`` written piece by piece; it appears at ``path`` only when the ``with`` block
    exits cleanly."""

    KIND = "store"

    def __init__(self, path: str | Path, attrs: dict):
        self._path, self._attrs = Path(path), attrs

    def __enter__(self):
        self._context = _store(self._path, self.KIND, self._attrs)
        self._group = self._context.__enter__()
        self._create()
        return self

    def _create(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Write what can only be known at the end (offsets)."""

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            try:
                self._finish()
            except BaseException as err:
                self._context.__exit__(type(err), err, err.__traceback__)
                raise
        self._context.__exit__(*exc)


class _FrameRowsWriter(_StreamingStore):
    """Rows sorted by frame, streamed block by block, plus ``frame_offsets`` (T+1,) written on close.

    Subclasses name their arrays in ``COLUMNS``: name -> (dtype, trailing shape); ``frame`` comes first.
    """

    COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {}

    def __init__(self, path: str | Path, attrs: dict, chunk_rows: int = 1 << 16):
        if "frame_rate_hz" not in attrs:
            raise ValueError(f"{self.KIND} attrs need frame_rate_hz")
        super().__init__(path, attrs)
        self._chunk_rows = chunk_rows
        self._counts: list[np.ndarray] = []
        self._next_frame = 0

    def _create(self) -> None:
        self._arrays = {
            name: self._group.create_array(
                name, shape=(0, *tail), dtype=dt, chunks=(self._chunk_rows, *tail), compressors=COMPRESSOR
            )
            for name, (dt, tail) in self.COLUMNS.items()
        }

    def _append_rows(self, frame: np.ndarray, **columns: np.ndarray) -> None:
        """Append rows of consecutive frames, starting at the next unwritten frame, sorted by frame."""
        frame = np.asarray(frame, dtype=np.int32)
        if len(frame) and (frame[0] < self._next_frame or np.any(np.diff(frame) < 0)):
            raise ValueError(f"{self.KIND} must be appended in frame order")
        if len(frame):
            n_frames = int(frame[-1]) + 1 - self._next_frame
            self._counts.append(np.bincount(frame - self._next_frame, minlength=n_frames))
            self._next_frame += n_frames
        for name, data in {"frame": frame, **columns}.items():
            dt, tail = self.COLUMNS[name]
            self._arrays[name].append(np.asarray(data, dtype=dt).reshape(-1, *tail), axis=0)

    def pad_frames(self, n_frames: int) -> None:
        """Declare empty frames up to ``n_frames`` in total (frames without rows)."""
        if n_frames > self._next_frame:
            self._counts.append(np.zeros(n_frames - self._next_frame, dtype=np.int64))
            self._next_frame = n_frames

    def _finish(self) -> None:
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
        _put(self._group, "frame_offsets", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


class TracksWriter(_FrameRowsWriter):
    """Stream ``tracks.zarr`` to disk frame block by frame block (memory flat in the run length)."""

    KIND = "tracks"
    COLUMNS = {"frame": ("i4", ()), "bubble": ("i8", ()), "pos_um": ("f4", (3,)), "vel_mm_s": ("f4", (3,))}

    def append(self, frame: np.ndarray, bubble: np.ndarray, pos_um: np.ndarray, vel_mm_s: np.ndarray) -> None:
        """Append rows of consecutive frames, starting at the next unwritten frame, sorted by frame."""
        self._append_rows(frame, bubble=bubble, pos_um=pos_um, vel_mm_s=vel_mm_s)


def _check_rows_finite(where: str, data: np.ndarray, offsets: np.ndarray, row0: int = 0, what: str = "positions") -> None:
    """Raise UlmError naming the frames whose rows (``data`` holds rows row0.. of a store whose rows of frame t
    are [offsets[t], offsets[t+1])) are not finite."""
    bad = ~np.all(np.isfinite(data), axis=tuple(range(1, data.ndim)))
    if bad.any():
        rows = row0 + np.flatnonzero(bad)[[0, -1]]
        first, last = (np.searchsorted(offsets, rows, side="right") - 1).tolist()
        frames = f"frame {first} holds" if first == last else f"frames {first}..{last} hold"
        raise UlmError(f"{where}: {frames} non-finite {what}")


def read_tracks(path: str | Path) -> Tracks:
    """Read a whole ``tracks.zarr`` into memory (validated: shapes, offsets, finite positions and velocities)."""
    g = _open(path, "tracks", TRACK_ARRAYS)
    tracks = Tracks(g["frame"][:], g["bubble"][:], g["pos_um"][:], g["vel_mm_s"][:], g["frame_offsets"][:], g.attrs.asdict())
    m, off = len(tracks.pos_um), tracks.frame_offsets
    if tracks.pos_um.shape != (m, 3) or tracks.vel_mm_s.shape != (m, 3) or tracks.pos_um.dtype.kind != "f":
        raise UlmError(f"tracks store {path}: pos_um and vel_mm_s must be (M, 3) floating point, got "
                       f"{tracks.pos_um.dtype} {tracks.pos_um.shape} and {tracks.vel_mm_s.shape}")  # fmt: skip
    if tracks.frame.shape != (m,) or tracks.bubble.shape != (m,):
        raise UlmError(f"tracks store {path}: frame and bubble must be ({m},), got {tracks.frame.shape}, {tracks.bubble.shape}")
    if off.ndim != 1 or len(off) < 1 or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != m:
        raise UlmError(f"tracks store {path}: frame_offsets must rise from 0 to the {m} rows of pos_um")
    _check_rows_finite(f"tracks store {path}", tracks.pos_um, off)
    _check_rows_finite(f"tracks store {path}", tracks.vel_mm_s, off, what="velocities")
    return tracks


class TracksReader:
    """Lazy, validated access to ``tracks.zarr``: frame blocks are read on demand (thread-safe reads).

    Raises UlmError if the store is empty or its arrays have the wrong shapes or dtypes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        g = _open(path, "tracks", TRACK_ARRAYS)
        self._group = g
        self.attrs = g.attrs.asdict()
        pos = g["pos_um"]
        if pos.ndim != 2 or pos.shape[1] != 3 or pos.dtype.kind != "f":
            raise UlmError(f"tracks store {path}: pos_um must be (M, 3) floating point in um, got {pos.shape} {pos.dtype}")
        self.frame_offsets = g["frame_offsets"][:]
        off = self.frame_offsets
        if len(off) < 2 or off[-1] == 0:
            raise UlmError(f"tracks store {path}: no bubble positions (empty tracks)")
        if off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != pos.shape[0]:
            raise UlmError(f"tracks store {path}: frame_offsets must rise from 0 to the {pos.shape[0]} rows of pos_um")
        if "frame_rate_hz" not in self.attrs:
            raise UlmError(f"tracks store {path}: missing attr frame_rate_hz")

    @property
    def n_frames(self) -> int:
        return len(self.frame_offsets) - 1

    def frames(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (K, 3) float64 um and their frame index relative to ``t0`` for frames [t0, t1)."""
        a, b = int(self.frame_offsets[t0]), int(self.frame_offsets[t1])
        pos = self._group["pos_um"][a:b].astype(np.float64)
        _check_rows_finite(f"tracks store {self.path}", pos, self.frame_offsets, a)
        rel = np.repeat(np.arange(t1 - t0), np.diff(self.frame_offsets[t0 : t1 + 1]))
        return pos, rel

    def bubbles(self, a: int, b: int) -> np.ndarray:
        """Bubble ids of rows [a, b)."""
        return self._group["bubble"][a:b]

    def bbox_um(self, chunk_rows: int = 1 << 20) -> np.ndarray:
        """[x0, x1, y0, y1, z0, z1] of all positions (read chunk by chunk)."""
        pos = self._group["pos_um"]
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for a in range(0, pos.shape[0], chunk_rows):
            block = pos[a : a + chunk_rows]
            _check_rows_finite(f"tracks store {self.path}", block, self.frame_offsets, a)
            lo, hi = np.minimum(lo, block.min(0)), np.maximum(hi, block.max(0))
        return np.column_stack([lo, hi]).ravel()


# -------------------------------------------------------------------------------------------- iq
IQ_ATTRS = ("origin_um", "spacing_um", "f0_hz", "wavelength_um", "frame_rate_hz", "probe", "mode")


class IqWriter(_StreamingStore):
    """``iq.zarr``: complex64 (T, Z, X) or (T, Z, Y, X), one chunk per block of ``block_frames``.

    ``write`` may be called from several threads at once for different, chunk-aligned blocks.
    """

    KIND = "iq"

    def __init__(self, path: str | Path, shape: tuple[int, ...], block_frames: int, attrs: dict):
        missing = [k for k in IQ_ATTRS if k not in attrs]
        if missing:
            raise ValueError(f"iq attrs lack {missing}")
        super().__init__(path, attrs)
        self._shape, self._block = shape, block_frames

    def _create(self) -> None:
        chunks = (min(self._block, self._shape[0]), *self._shape[1:])
        self._iq = self._group.create_array("iq", shape=self._shape, dtype="complex64", chunks=chunks, compressors=COMPRESSOR)

    def write(self, t0: int, data: np.ndarray) -> None:
        if t0 % self._block:
            raise ValueError("iq blocks must start on a chunk boundary")
        self._iq[t0 : t0 + len(data)] = data.astype(np.complex64)

    @property
    def array_path(self) -> str:
        """Path of the (temporary) ``iq`` array, for writers in other processes: see write_iq_block."""
        return str(self._path.with_name(self._path.name + ".tmp") / "iq")


def write_iq_block(array_path: str, t0: int, data: np.ndarray) -> None:
    """Write frames [t0, t0 + len(data)) into the iq array at ``array_path`` (chunk-aligned blocks only)."""
    zarr.open_array(array_path, mode="r+")[t0 : t0 + len(data)] = data.astype(np.complex64)


@dataclass
class Iq:
    """Beamformed IQ: ``iq`` (T, Z, X) or (T, Z, Y, X) complex64 (an :class:`IqArray`, read lazily) and attrs."""

    iq: IqArray
    attrs: dict

    @property
    def dims(self) -> int:
        return self.iq.ndim - 1


class IqArray:
    """The ``iq`` array of an ``iq.zarr``, read lazily like the Zarr array it wraps; every read is checked:
    non-finite IQ ends in one UlmError naming the store and the frames."""

    def __init__(self, array: zarr.Array, path: str | Path):
        self._array, self.path = array, Path(path)
        self.shape, self.ndim, self.dtype, self.chunks = array.shape, array.ndim, array.dtype, array.chunks

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)

    def __getitem__(self, key) -> np.ndarray:
        data = self._array[key]
        finite = np.isfinite(data)
        if not finite.all():
            first = key[0] if isinstance(key, tuple) and key else key
            if isinstance(first, slice) and np.ndim(data) >= 1:  # axis 0 holds frames start, start + step, ...
                start, _, step = first.indices(self.shape[0])
                rows = np.flatnonzero(~finite.all(axis=tuple(range(1, finite.ndim))))[[0, -1]]
                a, b = (start + step * rows).tolist()
                frames = f"frame {a} holds" if a == b else f"frames {a}..{b} hold"
            elif isinstance(first, int | np.integer):
                frames = f"frame {int(first)} holds"
            else:
                frames = "the frames read hold"
            raise UlmError(f"iq store {self.path}: {frames} non-finite values")
        return data


def read_iq(path: str | Path) -> Iq:
    """Open ``iq.zarr`` (lazily) and check its shape and attrs; blocks are checked as they are read (:class:`IqArray`)."""
    g = _open(path, "iq", ("iq",))
    arr, attrs = g["iq"], g.attrs.asdict()
    missing = [k for k in IQ_ATTRS if k not in attrs]
    if arr.ndim not in (3, 4) or arr.dtype != np.complex64 or missing:
        raise UlmError(f"iq store {path}: expected complex64 (T, Z, X) or (T, Z, Y, X) with attrs {list(IQ_ATTRS)}; "
                       f"got {arr.dtype} {arr.shape}, missing attrs {missing}")  # fmt: skip
    for key in ("origin_um", "spacing_um"):
        value = attrs[key]
        ok = isinstance(value, list) and len(value) == arr.ndim - 1 and all(isinstance(v, int | float) for v in value)
        if not ok or not np.all(np.isfinite(value)) or (key == "spacing_um" and min(value) <= 0):
            raise UlmError(f"iq store {path}: attr {key} must be {arr.ndim - 1} finite numbers (um)"
                           f"{', all positive' if key == 'spacing_um' else ''}, got {value}")  # fmt: skip
    for key in ("f0_hz", "wavelength_um", "frame_rate_hz"):
        value = attrs[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
            raise UlmError(f"iq store {path}: attr {key} must be a positive finite number, got {value}")
    return Iq(IqArray(arr, path), attrs)


# ------------------------------------------------------------------------- sparse / target / pred
COO_ARRAYS = ("coords", "feats", "block_offsets", "block_origin")


class CooWriter(_StreamingStore):
    """``sparse.zarr`` / ``target.zarr`` / ``pred.zarr``: COO sites appended block by block, so block b
    is rows [block_offsets[b], block_offsets[b+1]) and ``block_origin[b]`` its first iq index."""

    def __init__(self, path: str | Path, n_coords: int, n_feats: int, attrs: dict, chunk_rows: int = 1 << 14,
                 kind: str = "sparse"):  # fmt: skip
        if kind not in ("sparse", "target", "pred"):
            raise ValueError(f"COO store kind {kind!r}: expected sparse, target or pred")
        super().__init__(path, attrs)
        self.KIND = kind
        self._n_coords, self._n_feats, self._chunk_rows = n_coords, n_feats, chunk_rows
        self._offsets, self._origins = [0], []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # rows not yet written: whole chunks only

    def _create(self) -> None:
        rows = self._chunk_rows
        self._coords = self._group.create_array(
            "coords", shape=(0, self._n_coords), dtype="i4", chunks=(rows, self._n_coords), compressors=COMPRESSOR
        )
        self._feats = self._group.create_array(
            "feats", shape=(0, self._n_feats), dtype="f4", chunks=(rows, self._n_feats), compressors=COMPRESSOR
        )

    def append(self, coords: np.ndarray, feats: np.ndarray, origin: np.ndarray) -> None:
        """Append one block's sites (coords (N, n_coords), feats (N, n_feats)) and its origin."""
        if len(coords) != len(feats):
            raise ValueError("coords and feats need the same number of rows")
        if len(coords):
            self._pending.append(
                (
                    np.asarray(coords, np.int32).reshape(-1, self._n_coords),
                    np.asarray(feats, np.float32).reshape(-1, self._n_feats),
                )
            )
        self._offsets.append(self._offsets[-1] + len(coords))
        self._origins.append(np.asarray(origin, np.int64))
        if self._offsets[-1] - self._coords.shape[0] >= self._chunk_rows:
            self._flush(whole_chunks=True)

    def _flush(self, whole_chunks: bool) -> None:
        """Append the pending rows (all, or as many whole chunks as there are) in one write per array."""
        if not self._pending:
            return
        coords, feats = np.concatenate([c for c, _ in self._pending]), np.concatenate([f for _, f in self._pending])
        n = len(coords) // self._chunk_rows * self._chunk_rows if whole_chunks else len(coords)
        self._coords.append(coords[:n], axis=0)
        self._feats.append(feats[:n], axis=0)
        self._pending = [(coords[n:], feats[n:])] if n < len(coords) else []

    def _finish(self) -> None:
        self._flush(whole_chunks=False)
        _put(self._group, "block_offsets", np.asarray(self._offsets, np.int64))
        width = len(self._origins[0]) if self._origins else self._n_coords
        _put(self._group, "block_origin", np.asarray(self._origins, np.int64).reshape(-1, width))


class CooStore:
    """Validated, O(1) random access to the blocks of a COO store (readable from worker processes)."""

    def __init__(self, path: str | Path, kind: str = "sparse"):
        self.path, self.kind = Path(path), kind
        g = _open(path, kind, COO_ARRAYS)
        self.attrs = g.attrs.asdict()
        coords, feats = g["coords"], g["feats"]
        self.offsets, self.origin = g["block_offsets"][:], g["block_origin"][:]
        problems = []
        if coords.dtype.kind != "i" or coords.ndim != 2:
            problems.append(f"coords must be 2-D integers, got {coords.dtype} {coords.shape}")
        if feats.dtype != np.float32 or feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
            problems.append(f"feats must be float32 with one row per coordinate, got {feats.dtype} {feats.shape}")
        off = self.offsets
        if self.offsets.dtype.kind not in "iu" or len(off) < 1 or off[0] != 0 or np.any(np.diff(off) < 0):
            problems.append("block_offsets must rise from 0")
        elif off[-1] != coords.shape[0]:
            problems.append(f"block_offsets end at {off[-1]} but there are {coords.shape[0]} rows (truncated store?)")
        if len(self.origin) != len(off) - 1:
            problems.append(f"block_origin has {len(self.origin)} rows for {len(off) - 1} blocks")
        if problems:
            raise UlmError(f"{kind} store {path}: {'; '.join(problems)}")
        self._coords, self._feats = coords, feats
        # the block's shape that bounds the coordinates: block_shape (sparse: t, z, [y,] x) or fine_block_shape
        self._bound: tuple[str, list[int]] | None = None
        for key in ("block_shape", "fine_block_shape"):
            shape = self.attrs.get(key)
            if isinstance(shape, list) and len(shape) == coords.shape[1] and all(isinstance(n, int) for n in shape):
                self._bound = key, shape

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates (N, C) int32 and features (N, F) float32 of block ``b``."""
        if not 0 <= b < len(self):
            raise IndexError(f"block {b} out of range 0..{len(self) - 1}")
        a, z = int(self.offsets[b]), int(self.offsets[b + 1])
        coords, feats = self._coords[a:z], self._feats[a:z]
        where = f"{self.kind} store {self.path}: block {b} (rows {a}..{z - 1})"
        if self._bound is not None:
            key, shape = self._bound
            outside = np.any((coords < 0) | (coords >= np.asarray(shape)), axis=1)
            if outside.any():
                raise UlmError(f"{where} has {int(outside.sum())} sites outside its {key} {shape}")
        elif np.any(coords < 0):
            raise UlmError(f"{where} has negative coordinates")
        if not np.all(np.isfinite(feats)):
            raise UlmError(f"{where} holds non-finite feats")
        return coords, feats


# ------------------------------------------------------------------------------- localizations
LOC_ARRAYS = ("frame", "pos_um", "track", "frame_offsets")


@dataclass
class Localizations(_FrameIndexed):
    """Conventional ULM localizations, sorted by frame.

    frame : (M,) int32; pos_um : (M, 3) float32 world (x, y, z), y = ``plane_y_um`` in 2D;
    track : (M,) int64 track id, -1 if untracked; frame_offsets : (T+1,) int64, rows of frame t are
    [off[t], off[t+1]). ``attrs`` holds ``frame_rate_hz`` and the iq grid (origin_um, spacing_um, shape).
    """

    frame: np.ndarray
    pos_um: np.ndarray
    track: np.ndarray
    frame_offsets: np.ndarray
    attrs: dict = field(default_factory=dict)


class LocalizationsWriter(_FrameRowsWriter):
    """Stream ``localizations.zarr`` frame block by frame block (memory flat in the run length).

    Track ids may be provisional while streaming: :meth:`relabel` sets a mapping old id -> new id
    (-1 = untracked) that is applied to the whole ``track`` array, chunk by chunk, when the store is closed.
    """

    KIND = "localizations"
    COLUMNS = {"frame": ("i4", ()), "pos_um": ("f4", (3,)), "track": ("i8", ())}

    def __init__(self, path: str | Path, attrs: dict, chunk_rows: int = 1 << 16):
        super().__init__(path, attrs, chunk_rows)
        self._mapping: np.ndarray | None = None

    def append(self, frame: np.ndarray, pos_um: np.ndarray, track: np.ndarray) -> None:
        """Append rows (frame (K,), pos_um (K, 3) um, track (K,)) starting at the next unwritten frame, sorted by frame."""
        self._append_rows(frame, pos_um=pos_um, track=track)

    def relabel(self, mapping: np.ndarray) -> None:
        """On close, replace every track id k >= 0 by ``mapping[k]`` (int64, -1 = untracked)."""
        self._mapping = np.asarray(mapping, dtype=np.int64)

    def _finish(self) -> None:
        super()._finish()
        if self._mapping is not None:
            track = self._arrays["track"]
            for a in range(0, track.shape[0], self._chunk_rows):
                ids = track[a : a + self._chunk_rows]
                track[a : a + len(ids)] = np.where(ids >= 0, self._mapping[np.maximum(ids, 0)], -1)


def write_localizations(path: str | Path, loc: Localizations, attrs: dict | None = None) -> None:
    """Write an in-memory :class:`Localizations` as ``localizations.zarr`` atomically."""
    with LocalizationsWriter(path, {**loc.attrs, **(attrs or {})}) as writer:
        writer.append(loc.frame, loc.pos_um, loc.track)
        writer.pad_frames(loc.n_frames)


def read_localizations(path: str | Path) -> Localizations:
    """Read a whole ``localizations.zarr`` (validated: shapes, dtypes, offsets, frame_rate_hz)."""
    g = _open(path, "localizations", LOC_ARRAYS)
    frame, pos, track, off = g["frame"][:], g["pos_um"][:], g["track"][:], g["frame_offsets"][:]
    attrs = g.attrs.asdict()
    problems = []
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.dtype.kind != "f":
        problems.append(f"pos_um must be (M, 3) floating point in um, got {pos.shape} {pos.dtype}")
    elif frame.shape != (len(pos),) or track.shape != (len(pos),) or frame.dtype.kind != "i" or track.dtype.kind != "i":
        problems.append(f"frame and track must be (M,) integers with M = {len(pos)}, got {frame.shape}, {track.shape}")
    elif len(off) < 1 or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != len(pos):
        problems.append(f"frame_offsets must rise from 0 to the {len(pos)} rows of pos_um")
    if "frame_rate_hz" not in attrs:
        problems.append("missing attr frame_rate_hz")
    if problems:
        raise UlmError(f"localizations store {path}: {'; '.join(problems)}")
    _check_rows_finite(f"localizations store {path}", pos, off)
    return Localizations(frame, pos, track, off, attrs)


# -------------------------------------------------------------------------------------- density
DENSITY_ATTRS = ("origin_um", "spacing_um", "factor", "method")


@dataclass
class Density:
    """An accumulated map on the ``factor`` x fine grid: ``density`` float32 (Z, X) or (Z, Y, X) and attrs
    ``origin_um``, ``spacing_um`` (array order, um), ``factor``, ``method``; ``blocks``, when the store
    holds them, the marked pixels of each time block (flat indices into ``density``), the map's parts."""

    density: np.ndarray
    attrs: dict
    blocks: list[np.ndarray] | None = None

    @property
    def dims(self) -> int:
        return self.density.ndim


def write_density(path: str | Path, density: np.ndarray, attrs: dict, blocks: list[np.ndarray] | None = None) -> None:
    """Write ``density/<method>.zarr`` atomically; ``attrs`` must hold origin_um, spacing_um, factor, method.
    ``blocks`` (optional): per time block, the flat indices of the pixels it marks (arrays ``block_sites``
    and ``block_offsets``, so that a score can leave one block out)."""
    missing = [k for k in DENSITY_ATTRS if k not in attrs]
    density = np.asarray(density, dtype=np.float32)
    if missing or density.ndim not in (2, 3) or any(len(attrs[k]) != density.ndim for k in ("origin_um", "spacing_um")):
        raise ValueError(f"density needs a 2-D or 3-D map and attrs {list(DENSITY_ATTRS)} with one value per axis")
    with _store(path, "density", attrs) as g:
        _put(g, "density", density, chunk_rows=max(1, (1 << 22) // max(1, int(np.prod(density.shape[1:])))))
        if blocks is not None:
            sizes = np.array([len(b) for b in blocks], np.int64)
            _put(g, "block_offsets", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            _put(g, "block_sites", np.concatenate([np.zeros(0, np.int64), *[np.asarray(b, np.int64) for b in blocks]]))


def read_density(path: str | Path) -> Density:
    """Read ``density/<method>.zarr`` (validated: float map of 2 or 3 axes, grid attrs)."""
    g = _open(path, "density", ("density",))
    arr, attrs = g["density"], g.attrs.asdict()
    missing = [k for k in DENSITY_ATTRS if k not in attrs]
    if arr.ndim not in (2, 3) or arr.dtype.kind != "f" or missing:
        raise UlmError(f"density store {path}: expected a float (Z, X) or (Z, Y, X) map with attrs {list(DENSITY_ATTRS)}; "
                       f"got {arr.dtype} {arr.shape}, missing attrs {missing}")  # fmt: skip
    blocks = None
    if "block_offsets" in g and "block_sites" in g:
        offsets, sites = g["block_offsets"][:], g["block_sites"][:]
        ordered = offsets.ndim == 1 and len(offsets) >= 1 and offsets[0] == 0 and np.all(np.diff(offsets) >= 0)
        inside = len(sites) == 0 or (sites.min() >= 0 and sites.max() < arr.size)
        if not (ordered and offsets[-1] == len(sites) and inside):
            raise UlmError(f"density store {path}: block_offsets / block_sites do not index the {arr.shape} map")
        blocks = [sites[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    density = arr[:]
    if not np.all(np.isfinite(density)):
        raise UlmError(f"density store {path}: the map holds {int(np.sum(~np.isfinite(density)))} non-finite pixels")
    return Density(density, attrs, blocks)
