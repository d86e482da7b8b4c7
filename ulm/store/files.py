"""Atomic outputs: everything a stage writes appears only when the stage has succeeded.

One writer per file kind: :func:`write_csv`, :func:`write_json`, :func:`save_figure` (PNG) and
:func:`save_torch` (checkpoints), all built on :func:`atomic_path`."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

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
            try:
                for tmp, path in _staged:
                    _replace(tmp, path)
            finally:  # a move that failed (a full disk, a path that changed meanwhile) leaves no .tmp behind
                for tmp, _ in _staged:
                    remove_path(tmp)
    finally:
        _staged = outer


def staged(path: str | Path) -> Path:
    """Where ``path`` is right now: its temporary sibling while the transaction that wrote it is open."""
    path = Path(path)
    for tmp, final in _staged or ():
        if final == path:
            return tmp
    return path


def staged_under(path: str | Path) -> list[Path]:
    """The temporary paths, in the open transaction, of ``path`` and of what was written inside it."""
    path = Path(path)
    tmp = staged(path)
    return [t for t, final in _staged or () if final == path or tmp in final.parents]


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


# --------------------------------------------------------------------------- one writer per file kind
def write_csv(
    path: str | Path, rows: Iterable[Mapping], fieldnames: Sequence[str] | None = None, extrasaction: str = "raise"
) -> None:
    """A CSV table, written atomically: a header of ``fieldnames`` (default: the first row's keys), then one
    line per row (``csv.DictWriter``; ``extrasaction="ignore"`` drops keys that are not columns)."""
    rows = list(rows)
    fields = list(fieldnames if fieldnames is not None else rows[0])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction=extrasaction)
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: str | Path, obj, indent: int | None = None) -> None:
    """``json.dumps(obj, indent=indent)`` as a file (no trailing newline), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent))


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure (``matplotlib.figure.Figure``) as an image, written atomically; the format is the
    path's suffix (PNG when it has none), cropped to its content (``bbox_inches="tight"``), ``dpi`` dots per inch."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")


def save_torch(obj, path: str | Path, now: bool = False) -> None:
    """``torch.save(obj)`` written atomically (``now``: at once, even inside an open :func:`transaction`)."""
    import torch  # on demand: the store does not need torch otherwise

    with atomic_path(path, now=now) as tmp:
        torch.save(obj, tmp)
