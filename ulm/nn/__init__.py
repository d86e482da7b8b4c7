"""The paper's super-resolution network: one definition (stages.py) that runs on spconv sparse tensors
or, as its dense twin, on dense torch tensors (network.ULMNet)."""

from ulm.nn.spec import NetSpec

__all__ = ["NetSpec"]
