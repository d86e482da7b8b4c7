"""The network's checkpoints: building the network for a device, and reading back what `ulm train` wrote.

Every checkpoint is a dict of tensors, numbers and text (loaded with ``weights_only=True``: a crafted pickle
cannot run code); it names the network's ``architecture`` (another architecture's are refused) and the
``ulm_version`` that wrote it.
"""

from __future__ import annotations

from pathlib import Path

import torch

import ulm
from ulm.errors import UlmError
from ulm.nn.network import ULMNet
from ulm.nn.spec import NetSpec

ARCHITECTURE = "deep-stulm-reference-v1"  # written into checkpoints: another architecture's are refused


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UlmError("train.device = cuda but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def build_net(spec: NetSpec, device: torch.device) -> ULMNet:
    """The network (spconv's default algorithm on CUDA, ConvAlgo.Native on CPU)."""
    from spconv.core import ConvAlgo

    return ULMNet(spec, algo=None if device.type == "cuda" else ConvAlgo.Native).to(device)


def spec_from_config(cfg: dict, dims: int) -> NetSpec:
    """The network of the ``train`` config section for ``dims`` (2 or 3) spatial dimensions."""
    return NetSpec(
        dims=dims,
        width=cfg["width"],
        prune=cfg["prune"],
        prune_threshold=cfg["prune_threshold"],
        deep_supervision=cfg["deep_supervision"],
        cascaded=cfg["cascaded"],
    )


def stamp(ckpt: dict) -> dict:
    """``ckpt`` with the ``ulm_version`` that writes it."""
    return {**ckpt, "ulm_version": ulm.__version__}


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[ULMNet, dict]:
    """The network (in eval mode, on ``device``) and the dict of a checkpoint written by `ulm train`
    (one clear error for anything else)."""
    path = Path(path)
    if not path.is_file():
        raise UlmError(f"checkpoint {path}: not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint (or a cut one)
        raise UlmError(f"checkpoint {path}: not a checkpoint of `ulm train` ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("architecture") != ARCHITECTURE:
        found = ckpt.get("architecture", "an older network") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UlmError(f"checkpoint {path}: made for {found}, not this network ({ARCHITECTURE}); retrain it with `ulm train`")
    weights = ckpt.get("model")
    if isinstance(weights, dict) and any(
        torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in weights.values()
    ):
        raise UlmError(f"checkpoint {path}: holds non-finite (NaN or inf) weights; retrain it with `ulm train`")
    try:
        net = build_net(NetSpec(**ckpt["spec"]), device)
        net.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError, UlmError) as exc:  # RuntimeError: shapes
        raise UlmError(
            f"checkpoint {path}: weights do not fit the network ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        ) from None
    return net.eval(), ckpt
