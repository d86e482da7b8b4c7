"""One network definition shared by the sparse (spconv) and dense (torch) implementations.

Deep-stULM-like super-resolution network (Rauby et al. 2024, following its reference code):
an encoder-decoder over (t, space) with skip connections, then the time axis is max-pooled away
and three x2 transposed-convolution stages, each preceded by a pruning classifier, reach the
``factor`` = 8 finer grid. Every layer is listed once in :func:`layers`, in the weight layout of
spconv, (out, *kernel, in), so that one state dict loads into both implementations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class NetSpec:
    """Architecture options.

    dims : spatial dimensions (2: 3D convolutions over (t, z, x); 3: 4D over (t, z, y, x)).
    width : channels of the first stage (x2, x4 in the down stages).
    kernel : kernel size of the encoder/decoder convolutions (5 in the paper, 3 for CPU runs).
    time_stride, space_stride : downsampling per stage along time and along each spatial axis.
    n_up : number of x2 upsampling stages (3 -> 8x grid).
    prune : drop sites whose classifier probability is below ``prune_threshold`` before each up stage.
    deep_supervision : Dice loss at every scale (else only at the finest).
    """

    dims: int = 2
    width: int = 16
    kernel: int = 5
    time_stride: int = 4
    space_stride: int = 2
    n_up: int = 3
    prune: bool = True
    prune_threshold: float = 0.5
    deep_supervision: bool = True
    in_channels: int = 2

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def down_stride(self) -> tuple[int, ...]:
        return (self.time_stride,) + (self.space_stride,) * self.dims

    @property
    def factor(self) -> int:
        return 2**self.n_up

    def pad_shape(self, block_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Smallest (T, *space) >= ``block_shape`` divisible by the two down stages."""
        mult = [s * s for s in self.down_stride]
        return tuple(-(-n // m) * m for n, m in zip(block_shape, mult, strict=True))


@dataclass(frozen=True)
class Layer:
    """One convolution: ``kind`` is subm (same-size), down (kernel = stride), inverse (undoes a down),
    up (x2 transposed, generative) or head (1x1 classifier with bias); ``ndim`` its dimensions."""

    name: str
    kind: str
    cin: int
    cout: int
    kernel: tuple[int, ...]
    ndim: int
    pair: str | None = None  # the down layer an inverse layer undoes
    sites: str | None = None  # same-size layers on the same sites share spconv's index pairs


def layers(spec: NetSpec) -> list[Layer]:
    """Every layer of the network, in order."""
    w, k, n = spec.width, spec.kernel, spec.dims + 1
    kk, ds = (k,) * n, spec.down_stride
    out = [
        Layer("conv_in", "subm", spec.in_channels, w, kk, n, sites="full"),
        Layer("conv_e0", "subm", w, w, kk, n, sites="full"),
        Layer("down1", "down", w, 2 * w, ds, n),
        Layer("conv_e1", "subm", 2 * w, 2 * w, kk, n, sites="half"),
        Layer("down2", "down", 2 * w, 4 * w, ds, n),
        Layer("conv_e2", "subm", 4 * w, 4 * w, kk, n, sites="quarter"),
        Layer("up2", "inverse", 4 * w, 2 * w, ds, n, pair="down2"),
        Layer("conv_d1", "subm", 4 * w, 2 * w, kk, n, sites="half"),
        Layer("up1", "inverse", 2 * w, w, ds, n, pair="down1"),
        Layer("conv_d0", "subm", 2 * w, w, kk, n, sites="full"),
    ]
    d, ks = spec.dims, (3,) * spec.dims
    for s in range(spec.n_up):
        out += [
            Layer(f"cls{s}", "head", w, 1, (1,) * d, d),
            Layer(f"upconv{s}", "up", w, w, (2,) * d, d),
            Layer(f"conv_u{s}", "subm", w, w, ks, d, sites=f"up{s}"),
        ]
    return out + [Layer(f"cls{spec.n_up}", "head", w, 1, (1,) * d, d)]
