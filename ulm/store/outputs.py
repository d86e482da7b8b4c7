"""Output safety: before any work, refuse every path whose replacement would destroy something the stage
did not write (see docs/architecture.md, "Nothing is lost")."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

from ulm.errors import UlmError
from ulm.store.base import store_kind

SIDE_SUFFIXES = (".tmp", ".old")  # what replacing an output puts beside it (ulm.store.files)


def _starts_with(signature: bytes, partial: bool) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:
        with open(path, "rb") as fh:
            head = fh.read(len(signature))
        return head == signature or (partial and signature.startswith(head))

    return check


def _is_checkpoint(partial: bool) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:  # torch.save writes a zip; one cut short still starts like one
        return zipfile.is_zipfile(path) or (partial and _starts_with(b"PK\x03\x04", True)(path))

    return check


def _is_text(suffix: str) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:
        if path.suffix.lower() != suffix:
            return False
        try:
            text = path.read_bytes()[: 1 << 16].decode()
        except UnicodeDecodeError:
            return False
        return "\0" not in text and (suffix != ".json" or text.lstrip()[:1] in ("{", ""))

    return check


# the files a stage writes: (what a refusal calls it, is an existing file one, is it a cut one)
FILE_KINDS: dict[str, tuple[str, Callable[[Path], bool], Callable[[Path], bool]]] = {
    "checkpoint": ("a torch checkpoint", _is_checkpoint(False), _is_checkpoint(True)),
    "png": ("a PNG image", _starts_with(b"\x89PNG\r\n\x1a\n", False), _starts_with(b"\x89PNG\r\n\x1a\n", True)),
    "csv": ("a .csv table", _is_text(".csv"), _is_text(".csv")),
    "json": ("a .json file", _is_text(".json"), _is_text(".json")),
}


def resolved(path: str | Path) -> Path:
    """``path`` made absolute with its links followed; one clear error for a link that loops."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:  # Python raises RuntimeError for a symlink loop
        raise UlmError(f"{path}: cannot be resolved ({' '.join(str(exc).split())})") from None


def _only_zarr_files(store: Path) -> bool:
    """Whether every file under ``store`` is Zarr's (``zarr.json``, chunks under ``c/``) or Snakemake's timestamp."""
    for file in store.rglob("*"):
        if file.is_file() or file.is_symlink():
            parts = file.relative_to(store).parts
            if file.name not in ("zarr.json", ".snakemake_timestamp") and "c" not in parts[:-1]:
                return False
    return True


def _is_ours(path: Path, kind: str, leftover: bool = False) -> bool:
    """Whether ``path`` holds only what a run of a stage writing ``kind`` leaves there (``leftover``: also
    what a run stopped half way leaves: a cut file, a folder of stores still named ``.tmp``)."""
    if kind in FILE_KINDS:
        return path.is_file() and (path.stat().st_size == 0 and leftover or FILE_KINDS[kind][2 if leftover else 1](path))
    if kind == "density-folder":
        return path.is_dir() and all(_is_rendered(p, leftover) for p in path.iterdir())
    if leftover and path.is_dir() and not (path / "zarr.json").exists():
        return _only_zarr_files(path)  # a store stopped before its header was written (or empty)
    return path.is_dir() and store_kind(path) == kind and _only_zarr_files(path)


def _is_rendered(p: Path, leftover: bool) -> bool:
    """Whether ``p`` is something `ulm render` writes into its folder (or Snakemake's timestamp)."""
    name = p.name.removesuffix(".tmp") if leftover else p.name
    if p.name == ".snakemake_timestamp" or (name.endswith(".png") and p.is_file()):
        return True
    return name.endswith(".zarr") and _is_ours(p, "density", leftover)


def _describe(path: Path, kind: str) -> str:
    if kind in FILE_KINDS:
        return FILE_KINDS[kind][0] if path.is_file() else "a regular file"
    return "a folder written by `ulm render`" if kind == "density-folder" else f"a {kind} store (Zarr files only)"


def check_output(path: str | Path, kind: str, inputs: list[Path] = ()) -> None:
    """Refuse an OUTPUT whose replacement would destroy what the stage did not write: an input (or a folder
    holding one), a path inside a store, a symbolic link, anything that is not this ``kind`` of output
    (a user's directory or file, a store of another kind, a store with other files inside), and a
    ``.tmp`` / ``.old`` sibling in the way that is not a leftover of this stage.

    ``kind``: a store kind of :data:`~ulm.store.STORE_KINDS`; ``density-folder`` (a folder of density stores
    and PNGs); or a file kind of :data:`FILE_KINDS`."""
    path = Path(path)
    if path.is_symlink():
        raise UlmError(f"output {path}: is a symbolic link; give the path it points to")
    where = resolved(path)
    if not where.name:
        raise UlmError(f"output {path}: is the root folder; give a path for the output")
    sides = [where.with_name(where.name + s) for s in SIDE_SUFFIXES]
    for src in map(resolved, inputs):
        for spot in (where, *sides):
            if spot == src or spot in src.parents or src in spot.parents:
                raise UlmError(f"output {path}: is (or holds, or lies inside) the input {src}; choose another output path")
    for parent in where.parents:
        if parent.exists() and not parent.is_dir():
            raise UlmError(f"output {path}: {parent} is a file, not a folder")
        if (parent / "zarr.json").is_file():
            raise UlmError(f"output {path}: lies inside the store {parent}; choose a path outside it")
    if (path.exists() or path.is_symlink()) and not _is_ours(path, kind):
        what = _describe(path, kind)
        raise UlmError(f"output {path}: exists and is not {what}; refusing to replace it (move it away or choose another path)")
    for side in sides:
        if (side.exists() or side.is_symlink()) and (side.is_symlink() or not _is_ours(side, kind, leftover=True)):
            raise UlmError(f"output {path}: {side} is in the way and is not left from a run of this stage; move it away")
    if kind == "png" and path.suffix.lower() != ".png":
        raise UlmError(f"output {path}: a figure is written as PNG; give a path ending in .png")


def check_apart(paths: list[Path]) -> None:
    """Refuse two outputs of one stage at the same place, or one inside another."""
    where = [resolved(p) for p in paths]
    for i, a in enumerate(where):
        for j, b in enumerate(where):
            if i != j and (a == b or b in a.parents):
                what = "given twice; each output needs its own path" if a == b else f"lies inside the output {paths[j]}"
                raise UlmError(f"output {paths[i]}: {what}")
