"""The paper's super-resolution network: one definition (stages.py) that runs on spconv sparse tensors
or, as its dense twin, on dense torch tensors (network.ULMNet)."""

import logging
import warnings


def _quiet_dependencies() -> None:
    """Silence what spconv and torch print on every run and that says nothing to a user (before spconv is
    imported: every module here that imports it is below this package). Only these messages, from these
    modules: our own warnings, and any other, still show."""
    # spconv.pytorch.functional decorates with torch.cuda.amp.custom_fwd/custom_bwd (deprecated): 8 warnings per import
    warnings.filterwarnings(
        "ignore", r"`torch\.cuda\.amp\.custom_(fwd|bwd)\(args\.\.\.\)` is deprecated", FutureWarning, r"spconv\."
    )
    # ccimport (spconv's build helper) calls locale.getdefaultlocale: shown under -W error or pytest
    warnings.filterwarnings("ignore", r"'locale\.getdefaultlocale' is deprecated", DeprecationWarning, r"ccimport\.")

    class _NoFxTracingNote(logging.Filter):  # logged (not warned) once when a spconv.SparseConvTensor is made
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith("is_fx_tracing will return true")

    logging.getLogger("torch.fx._symbolic_trace").addFilter(_NoFxTracingNote())


_quiet_dependencies()

from ulm.nn.spec import NetSpec  # noqa: E402

__all__ = ["NetSpec"]
