"""The data contract in code: one typed reader and one atomic writer per Zarr store kind.

No other module opens Zarr by hand. Every output is written to ``<path>.tmp`` and moved into place
only when its stage has succeeded (all the stage's outputs together, see :func:`transaction`); every
store records its kind, manifest and content digest. See docs/architecture.md, "Stores" and
"Nothing is lost".

Modules: :mod:`~ulm.store.files` (atomic outputs), :mod:`~ulm.store.base` (sealing, opening, output
checks), :mod:`~ulm.store.graph`, :mod:`~ulm.store.rows` (tracks, localizations) and
:mod:`~ulm.store.images` (IQ, COO blocks, density maps).
"""

from ulm.store.base import (
    COMPRESSORS,
    STORE_KINDS,
    _chunk_digests,
    find_damage,
    store_digest,
    store_kind,
)
from ulm.store.files import (
    _replace,
    atomic_path,
    remove_path,
    save_figure,
    save_torch,
    staged,
    staged_under,
    transaction,
    write_csv,
    write_json,
)
from ulm.store.graph import VESSEL_TYPES, Flow, Graph, check_graph, read_flow, read_graph, write_flow, write_graph
from ulm.store.images import (
    DENSITY_ATTRS,
    IQ_ATTRS,
    CooStore,
    CooWriter,
    Density,
    Iq,
    IqArray,
    IqWriter,
    read_density,
    read_iq,
    write_density,
    write_iq_block,
)
from ulm.store.outputs import FILE_KINDS, check_apart, check_output, resolved
from ulm.store.rows import (
    Localizations,
    LocalizationsWriter,
    Tracks,
    TracksReader,
    TracksWriter,
    read_localizations,
    read_tracks,
    write_localizations,
)

__all__ = [
    "COMPRESSORS",
    "FILE_KINDS",
    "DENSITY_ATTRS",
    "IQ_ATTRS",
    "STORE_KINDS",
    "VESSEL_TYPES",
    "CooStore",
    "CooWriter",
    "Density",
    "Flow",
    "Graph",
    "Iq",
    "IqArray",
    "IqWriter",
    "Localizations",
    "LocalizationsWriter",
    "Tracks",
    "TracksReader",
    "TracksWriter",
    "_chunk_digests",
    "_replace",
    "atomic_path",
    "check_apart",
    "check_graph",
    "check_output",
    "find_damage",
    "read_density",
    "read_flow",
    "read_graph",
    "read_iq",
    "read_localizations",
    "read_tracks",
    "remove_path",
    "resolved",
    "save_figure",
    "save_torch",
    "staged",
    "staged_under",
    "store_digest",
    "store_kind",
    "transaction",
    "write_csv",
    "write_density",
    "write_flow",
    "write_graph",
    "write_iq_block",
    "write_json",
    "write_localizations",
]
