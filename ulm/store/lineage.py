"""Lineage: which graph, flow, tracks and iq stores (by content digest) a store was made from.

Every store a stage writes records ``ulm_lineage`` = {kind: digest} of the simulation chain behind its
inputs (graph -> flow -> tracks -> iq). A stage whose inputs belong to one run checks that they agree:
localizations of yesterday's IQ scored against today's tracks is refused in one line, not trusted.
Stores written before lineage existed carry only their own digest, so they are checked as far as that goes.
"""

from __future__ import annotations

from pathlib import Path

import zarr

from ulm.errors import UlmError

CHAIN_KINDS = ("graph", "flow", "tracks", "iq")  # one of each behind every store of a run
LINEAGE_ATTR = "ulm_lineage"


def _store_attrs(path: Path) -> dict | None:
    if not (path / "zarr.json").is_file():
        return None
    try:
        return zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception:  # not a readable store: its reader names the problem
        return None


def lineage_of(path: str | Path) -> dict[str, str]:
    """{kind: digest} of the chain stores behind the store at ``path``, itself included when it is one
    ({} for anything that is not a store of ours)."""
    attrs = _store_attrs(Path(path))
    if attrs is None:
        return {}
    recorded = attrs.get(LINEAGE_ATTR)
    out = {k: str(v) for k, v in recorded.items() if k in CHAIN_KINDS} if isinstance(recorded, dict) else {}
    if attrs.get("ulm_kind") in CHAIN_KINDS and isinstance(attrs.get("ulm_digest"), str):
        out[attrs["ulm_kind"]] = attrs["ulm_digest"]
    return out


def stores_in(path: Path) -> list[Path]:
    """``path`` if it is a store, else the stores directly inside the folder ``path`` (density/)."""
    if (path / "zarr.json").is_file():
        return [path]
    return sorted(p for p in path.glob("*.zarr") if (p / "zarr.json").is_file()) if path.is_dir() else []


def common_lineage(paths: list[Path]) -> dict[str, str]:
    """The lineage the stores at ``paths`` (and inside folders among them) share; one line naming two
    inputs made from different chain stores when they do not agree."""
    seen: dict[str, tuple[str, Path]] = {}
    for store in (s for p in paths for s in stores_in(Path(p))):
        for kind, digest in lineage_of(store).items():
            first = seen.setdefault(kind, (digest, store))
            if first[0] != digest:
                raise UlmError(
                    f"inputs {first[1]} and {store} were made from different {kind} stores (digests {first[0][:12]} and "
                    f"{digest[:12]}): one of them is stale; rerun it from the same run"
                )
    return {kind: digest for kind, (digest, _) in seen.items()}


def record_lineage(path: Path, lineage: dict[str, str]) -> None:
    """Write ``lineage`` into the store at ``path`` (nothing when it is not a store); attrs only, so the
    store's content digest does not change."""
    if (path / "zarr.json").is_file():
        own = lineage_of(path)  # a store of the chain keeps its own digest under its own kind
        zarr.open_group(str(path), mode="r+").attrs[LINEAGE_ATTR] = {**lineage, **own}
