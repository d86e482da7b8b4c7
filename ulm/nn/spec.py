"""What the network is: the options of the reference Deep-stULM sparse architecture (Rauby et al. 2024).

The architecture itself is fixed (stages in :mod:`ulm.nn.stages`); the options below are the
reference's variants (pruning, deep supervision, cascaded training) and, for CPU runs, the base
channel count. Time is the first coordinate of every tensor here: (t, z, [y,] x).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ulm.errors import UlmError

DOWN_POOL = (4, 2)  # each down stage max-pools time by 4 and every spatial axis by 2
SKIP_TIME_POOL = (4, 16)  # the 16-px and 32-px skips are max-pooled in time to the decoder's 32 bins
TRANSITION1_TIME_POOL = 8  # 32 -> 4 time bins kept through the high-resolution stages
N_HR_STAGES = 3  # three x2 transposed-convolution stages: the 8x grid
INPUT_KERNEL, KERNEL = 5, 3
TIME_MULTIPLE = DOWN_POOL[0] ** 2 * TRANSITION1_TIME_POOL  # 128: frames per block must be a multiple
SPACE_MULTIPLE = DOWN_POOL[1] ** 2  # 4: tiles are zero-padded to a multiple


@dataclass(frozen=True)
class NetSpec:
    """Options of the network.

    dims : spatial dimensions (2: 3D convolutions over (t, z, x); 3: 4D convolutions over (t, z, y, x)).
    width : base channels (16 in the reference; 2 x and 4 x in the down stages; must be even).
    prune : a classifier before each high-resolution stage; sites with probability <= ``prune_threshold``
        are dropped (the most likely site is kept when none passes). Implies the classifiers' losses.
    deep_supervision : a classifier before each high-resolution stage with its own Dice loss.
    cascaded : trained stage by stage (the reference's multiphase); needs the classifiers too.
    """

    dims: int = 2
    width: int = 16
    prune: bool = False
    prune_threshold: float = 0.5
    deep_supervision: bool = False
    cascaded: bool = False
    in_channels: int = 2

    def __post_init__(self):
        if self.dims not in (2, 3):
            raise UlmError(f"network dims must be 2 or 3, got {self.dims}")
        if self.width < 2 or self.width % self.in_channels:
            raise UlmError(f"network width must be a multiple of {self.in_channels} (the input is repeated), got {self.width}")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def classifiers(self) -> bool:
        """Whether each high-resolution stage has a classifier (and a loss) on its input."""
        return self.prune or self.deep_supervision or self.cascaded

    @property
    def factor(self) -> int:
        return 2**N_HR_STAGES

    @property
    def n_phases(self) -> int:
        """Network phases: 0..N_HR_STAGES - 1 stop after the classifier of that stage (cascaded training);
        the last one is the whole network."""
        return N_HR_STAGES + 1

    def pad_shape(self, block_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The (T, *space) the network runs on: tiles zero-padded to a multiple of 4 px; the frames
        must already be a multiple of 128 (one clear error otherwise)."""
        if len(block_shape) != self.dims + 1:
            raise UlmError(f"blocks of shape {tuple(block_shape)}, but the network is {self.dims}D+t ({self.dims + 1} axes)")
        t = int(block_shape[0])
        if t < TIME_MULTIPLE or t % TIME_MULTIPLE:
            raise UlmError(
                f"blocks of {t} frames: the network pools time by {DOWN_POOL[0]} x {DOWN_POOL[0]} x {TRANSITION1_TIME_POOL}, "
                f"so sparse.block_frames must be a multiple of {TIME_MULTIPLE} (512 in the paper)"
            )
        return (t, *(-(-int(n) // SPACE_MULTIPLE) * SPACE_MULTIPLE for n in block_shape[1:]))

    def hr_time_bins(self, frames: int) -> int:
        """Time bins held through the high-resolution stages (4 for 512-frame blocks)."""
        return frames // TIME_MULTIPLE
