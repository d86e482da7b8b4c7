"""Super-resolution networks: one spec (spec.py), a sparse (spconv) and a dense (torch) implementation."""

from ulm.nn.spec import NetSpec, layers

__all__ = ["NetSpec", "layers"]
