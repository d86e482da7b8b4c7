"""The paper's claims, checked on a run (stage `ulm claims`): :mod:`~ulm.claims.verdicts` builds one row per
claim with the figures that decide it and its verdict; :mod:`~ulm.claims.figures` draws the figures that
go with them."""

from ulm.claims.verdicts import claims_table, read_kept, read_memory, read_runs, verdict, write_claims

__all__ = ["claims_table", "read_kept", "read_memory", "read_runs", "verdict", "write_claims"]
