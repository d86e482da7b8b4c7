"""Corrupt and incomplete stores, through the CLI: each is one line naming the store and what is wrong
(exit status 2), never a silent read of zeros and never a traceback.

Every writer records in the store what it holds (``ulm_manifest``: per array its chunk files and
bytes; ``ulm_digest``: its content's sha256), so a reader tells a complete store from one that lost
or cut chunks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from ulm.store import read_iq, store_digest

SMALL = ["--set", "graph.synthetic.size_um=[200,200,200]"]
FORWARD = [
    *("--set", "bubbles.n_frames=64", "--set", "bubbles.concentration=3", "--set", "forward.mode=psf"),
    *("--set", "forward.block_frames=16", "--set", "sparse.block_frames=16"),
]


def ulm(*argv: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ulm", *map(str, argv)], capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """graph, flow, tracks and 2D IQ stores of a small synthetic network, made by the CLI."""
    root = tmp_path_factory.mktemp("corrupt")
    steps = [
        ("graph", *SMALL, "synthetic", root / "graph.zarr"),
        ("flow", root / "graph.zarr", root / "flow.zarr"),
        ("bubbles", "--quiet", *FORWARD, root / "graph.zarr", root / "flow.zarr", root / "tracks.zarr"),
        ("forward", "--quiet", *FORWARD, "--dims", "2", root / "tracks.zarr", root / "iq.zarr"),
    ]
    for step in steps:
        result = ulm(*step)
        assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def iq_copy(chain, tmp_path) -> Path:
    shutil.copytree(chain / "iq.zarr", tmp_path / "iq.zarr")
    return tmp_path / "iq.zarr"


def chunk_files(store: Path, array: str) -> list[Path]:
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())


def sparsify(iq: Path, out: Path) -> subprocess.CompletedProcess:
    return ulm("sparsify", "--quiet", *FORWARD, iq, out)


def test_writers_record_what_the_store_holds(chain):
    attrs = zarr.open_group(str(chain / "iq.zarr"), mode="r").attrs
    n_files, n_bytes = attrs["ulm_manifest"]["iq"]
    files = chunk_files(chain / "iq.zarr", "iq")
    assert n_files == len(files) > 1 and n_bytes == sum(f.stat().st_size for f in files)
    assert attrs["ulm_kind"] == "iq" and attrs["ulm_digest"] == store_digest(chain / "iq.zarr")


def test_a_missing_chunk_file_is_named_not_read_as_zeros(iq_copy, tmp_path):
    chunk_files(iq_copy, "iq")[1].unlink()
    one_line_error(sparsify(iq_copy, tmp_path / "sparse.zarr"), "iq.zarr", "array iq", "damaged")
    assert not (tmp_path / "sparse.zarr").exists()


def test_a_cut_chunk_file_is_named(iq_copy, tmp_path):
    chunk = chunk_files(iq_copy, "iq")[0]
    chunk.write_bytes(chunk.read_bytes()[:-7])
    one_line_error(sparsify(iq_copy, tmp_path / "sparse.zarr"), "iq.zarr", "damaged")


def test_a_garbled_store_header_is_named(iq_copy, tmp_path):
    (iq_copy / "zarr.json").write_text("{ not json")
    one_line_error(sparsify(iq_copy, tmp_path / "sparse.zarr"), "iq.zarr", "not a Zarr group")


def test_a_lost_array_is_named(iq_copy, tmp_path):
    shutil.rmtree(iq_copy / "iq")
    one_line_error(sparsify(iq_copy, tmp_path / "sparse.zarr"), "iq.zarr", "missing array")


def test_a_store_of_another_kind_is_named(chain, tmp_path):
    one_line_error(sparsify(chain / "tracks.zarr", tmp_path / "sparse.zarr"), "tracks.zarr", "iq")
    one_line_error(ulm("flow", chain / "flow.zarr", tmp_path / "flow.zarr"), "flow.zarr", "graph")


def test_a_store_written_before_manifests_still_reads(iq_copy):
    group = zarr.open_group(str(iq_copy), mode="r+")
    del group.attrs["ulm_manifest"]
    assert read_iq(iq_copy).iq.shape[0] == 64


def test_the_digest_is_of_the_content_not_the_attrs(iq_copy, chain):
    group = zarr.open_group(str(iq_copy), mode="r+")
    digest = store_digest(iq_copy)
    group.attrs["note"] = "an attribute changed"
    assert store_digest(iq_copy) == digest
    del group.attrs["ulm_digest"]  # computed from the chunks when a store has none
    assert len(store_digest(iq_copy)) == 64


def test_a_torn_checkpoint_is_named(chain, tmp_path):
    torn = tmp_path / "model.pt"
    torn.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    result = ulm("infer", "--quiet", torn, chain / "iq.zarr", tmp_path / "pred.zarr")
    one_line_error(result, "model.pt", "not a checkpoint")


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("harm", ["bit flip", "garbage of the same size", "zeros of the same size"])
def test_a_chunk_altered_on_disk_is_named_not_read_as_wrong_numbers(iq_copy, tmp_path, harm):
    """Same file count and bytes (the manifest cannot tell): the chunk's CRC-32C can, and the error names it."""
    chunk = chunk_files(iq_copy, "iq")[1]
    size = chunk.stat().st_size
    if harm == "bit flip":
        flip_a_bit(chunk)
    else:
        chunk.write_bytes(bytes(size) if harm.startswith("zeros") else bytes(range(256)) * (size // 256) + bytes(size % 256))
    line = one_line_error(sparsify(iq_copy, tmp_path / "sparse.zarr"), "iq store", "array iq", "chunk 1/0/0", "damaged")
    assert "checksum" in line
    assert not (tmp_path / "sparse.zarr").exists()


def test_an_altered_chunk_of_any_store_kind_is_named(chain, tmp_path):
    for name, array, argv in [
        ("graph.zarr", "nodes/pos_um", ("flow", "{store}", tmp_path / "flow.zarr")),
        ("tracks.zarr", "pos_um", ("forward", "--quiet", *FORWARD, "{store}", tmp_path / "iq.zarr")),
    ]:
        store = tmp_path / name
        shutil.copytree(chain / name, store)
        flip_a_bit(chunk_files(store, array)[0])
        result = ulm(*[store if a == "{store}" else a for a in argv])
        one_line_error(result, name, f"array {array}", "checksum")


@pytest.mark.parametrize("harm", ["garbage bytes", "another dtype"])
def test_a_garbled_array_header_is_named(iq_copy, tmp_path, harm):
    header = iq_copy / "iq" / "zarr.json"
    if harm == "garbage bytes":
        header.write_bytes(bytes(range(200, 256)) * 4)
    else:
        header.write_text(header.read_text().replace('"complex64"', '"float64"'))
    one_line_error(sparsify(iq_copy, tmp_path / "sparse.zarr"), "iq.zarr", "array iq", "unreadable metadata", "damaged")


def test_a_text_file_or_a_cut_checkpoint_is_not_a_checkpoint(chain, tmp_path):
    for content in (b"hi\n", b"PK\x03\x04" + bytes(4000)):
        bad = tmp_path / "model.pt"
        bad.write_bytes(content)
        one_line_error(ulm("infer", "--quiet", bad, chain / "iq.zarr", tmp_path / "pred.zarr"), "not a checkpoint")
