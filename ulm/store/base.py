"""Store basics: new groups, sealing (manifest + digest), opening with checks, output safety."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

import ulm
from ulm.errors import UlmError
from ulm.store.files import atomic_path

# zstd, then a CRC-32C of each compressed chunk: zarr checks it on every read, so a chunk that was altered on
# disk (a flipped bit, garbage of the same size) is an error instead of wrong numbers
COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"), Crc32cCodec())
STORE_KINDS = ("graph", "flow", "tracks", "iq", "sparse", "target", "pred", "localizations", "density")
# the arrays each kind holds (how a store without an ``ulm_kind`` attr is recognised)
GRAPH_ARRAYS = ("nodes/pos_um", "nodes/diam_um", "edges/index", "edges/diam_um", "edges/length_um", "edges/vessel_type")
FLOW_ARRAYS = ("edges/flow_um3_s", "edges/v_mean_mm_s", "nodes/pressure_mmHg")
TRACK_ARRAYS = ("frame", "bubble", "pos_um", "vel_mm_s", "frame_offsets")
COO_ARRAYS = ("coords", "feats", "block_offsets", "block_origin")
LOC_ARRAYS = ("frame", "pos_um", "track", "frame_offsets")


NOT_COPIED = ("ulm_manifest", "ulm_digest", "ulm_lineage", "ome")  # attrs that describe one store, never its copies


def _new_group(path: Path, kind: str, attrs: dict) -> zarr.Group:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    own = {"ulm_version": ulm.__version__, "ulm_kind": kind}  # never the copied attrs of another store (nor its image)
    group.attrs.update({**{k: v for k, v in attrs.items() if k not in NOT_COPIED}, **own})
    return group


def _put(group: zarr.Group, name: str, data: np.ndarray, dims: tuple[str, ...], chunk_rows: int = 1 << 18) -> None:
    """Write ``data`` as the array ``name`` of ``group`` with dimension names ``dims`` (one per axis), chunked by rows."""
    data = np.asarray(data)
    if len(dims) != data.ndim:
        raise ValueError(f"array {name}: {data.ndim} axes but dimension names {dims}")
    chunks = (max(1, min(len(data), chunk_rows)),) + data.shape[1:] if data.ndim else ()
    if data.dtype.kind in "UO":
        group.create_array(name, shape=data.shape, dtype=str, chunks=chunks, dimension_names=dims)[:] = data.astype(object)
    else:
        group.create_array(name, data=data, chunks=chunks, compressors=COMPRESSORS, dimension_names=dims)


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
    return {
        f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name != ".snakemake_timestamp"
    }


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
            raise UlmError(
                f"{kind} store {path}: array {name} has {len(files)} chunk files of {found} bytes, its writer "
                f"left {n_files} of {n_bytes} bytes (damaged store: rerun the stage that wrote it)"
            )


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


def find_damage(path: str | Path) -> str | None:
    """What cannot be read in the Zarr store at ``path`` (its group metadata, an array's metadata, or the
    first chunk that does not decode or fails its checksum), or None. Decodes every chunk: meant for the
    error path, to name the damaged store and chunk once a read has failed."""
    path = Path(path)
    for meta in sorted(path.rglob("zarr.json")):
        name = meta.parent.relative_to(path).as_posix()
        where = "its group metadata" if name == "." else f"array {name}"
        try:
            node_type = json.loads(meta.read_bytes()).get("node_type")
            if node_type != "array":
                zarr.open_group(str(meta.parent), mode="r").attrs.asdict()
                continue
            array = zarr.open_array(str(meta.parent), mode="r")
        except Exception as exc:
            return f"{where}: unreadable metadata ({type(exc).__name__})"
        for block in itertools.product(*(range(n) for n in array.cdata_shape)):
            try:
                array.get_block_selection(block)
            except Exception as exc:
                chunk = "/".join(map(str, block))
                if "checksum" in str(exc):
                    return f"{where}: chunk {chunk} fails its CRC-32C checksum (altered on disk)"
                return f"{where}: chunk {chunk} does not decode ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})"
    return None


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
        layouts = {
            "graph": GRAPH_ARRAYS,
            "flow": FLOW_ARRAYS,
            "tracks": TRACK_ARRAYS,
            "iq": ("iq",),
            "sparse": COO_ARRAYS,
            "localizations": LOC_ARRAYS,
            "density": ("density",),
        }
        return next((k for k, arrays in layouts.items() if all(a in group for a in arrays)), None)
    except Exception:  # anything zarr cannot open is not one of ours
        return None


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
