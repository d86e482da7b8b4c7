"""`ulm train`: fit the network on one or more (sparse.zarr, target.zarr) training stores.

One network per dimension is trained on the blocks of every given store (e.g. the grid's
concentrations of the training split); the last ``val_fraction`` of each store's blocks in time
validate it. The protocol is the reference's (:mod:`ulm.nn.schedule`): phases with a fresh Adam and
a MultiStepLR each, Dice loss (smooth 0.001), optionally the dilated target in the first phase.
Every epoch writes ``last.pt`` (everything needed to resume, the best epoch's weights included);
the run ends by writing ``model.pt`` (the best validation epoch), ``metrics.csv`` (epoch 0 is the
untrained model; ``trivial_val_dice``: the trivial predictor on the same validation blocks) and ``train.png``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from tqdm import tqdm

from ulm.dataset import DenseBlocks, SparseBlocks, collate_sparse
from ulm.errors import UlmError
from ulm.nn import schedule
from ulm.nn.loss import network_loss, pad_to, prediction
from ulm.nn.network import ULMNet, n_parameters
from ulm.nn.spec import N_HR_STAGES, NetSpec
from ulm.sparse import held_out_start
from ulm.store import atomic_path, store_digest

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
    return NetSpec(dims=dims, width=cfg["width"], prune=cfg["prune"], prune_threshold=cfg["prune_threshold"],
                   deep_supervision=cfg["deep_supervision"], cascaded=cfg["cascaded"])  # fmt: skip


@dataclass
class Inputs:
    """Turns collated batches into the network's input (sparse tensor, or dense padded blocks)."""

    spec: NetSpec
    model: str
    padded: tuple[int, ...]
    device: torch.device
    dense: list[DenseBlocks] | None = None

    def run(self, net: ULMNet, batch: dict, phase: int, dilated: bool = False,
            predict: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """Loss, and with ``predict`` (at the whole network's phase) the binarised prediction's (M, 1 + D) sites."""
        target = batch["target_indices"].to(self.device).long()
        if self.model == "dense":
            x = torch.stack([self.dense[int(s)][int(b)] for s, b in zip(batch["store"], batch["block"], strict=True)])
            levels = net(pad_to(x, self.padded).to(self.device), phase=phase)
        else:
            import spconv.pytorch as spconv

            x = spconv.SparseConvTensor(batch["features"].to(self.device), batch["indices"].to(self.device),
                                        list(self.padded), batch["batch_size"])  # fmt: skip
            levels = net(x, phase=phase)
        loss = network_loss(levels, target, self.spec, phase, dilated)
        pred = prediction(levels[-1])[0] if predict and phase == N_HR_STAGES else None
        return loss, pred


@dataclass
class TrainState:
    """What a resumed run continues from (saved in last.pt every epoch)."""

    epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    rows: list[dict] = field(default_factory=list)


def dice_counts(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """(|P and G|, |P|, |G|) of two site-index sets."""
    p = {tuple(r) for r in pred.cpu().tolist()}
    g = {tuple(r) for r in target.cpu().tolist()}
    return np.array([len(p & g), len(p), len(g)], dtype=np.int64)


def _save(obj: dict, path: Path, now: bool = False) -> None:
    """Write a checkpoint atomically (``now``: at once, even inside the stage's output transaction)."""
    with atomic_path(path, now=now) as tmp:
        torch.save(obj, tmp)


def _as_list(paths) -> list[Path]:
    return [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]


def open_training_data(sparse_paths, target_paths, val_fraction: float) -> tuple[list[SparseBlocks], Dataset, Dataset]:
    """Every store's blocks, split in time: the last ``val_fraction`` of each store validate."""
    stores = [SparseBlocks(s, t) for s, t in zip(_as_list(sparse_paths), _as_list(target_paths), strict=True)]
    shapes = {s.block_shape for s in stores}
    if len(shapes) > 1:
        raise UlmError(f"training stores with different block shapes {sorted(shapes)}: one network needs one block shape")
    train_parts, val_parts = [], []
    for i, data in enumerate(stores):
        starts = data.origins[:, 0]
        first_val = held_out_start(int(starts.max()) + data.block_shape[0], data.block_shape[0], val_fraction)
        train_idx, val_idx = np.flatnonzero(starts < first_val), np.flatnonzero(starts >= first_val)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise UlmError(f"{data.sparse_path}: {len(data)} blocks, too few to hold out the last {val_fraction:.0%} in time")
        train_parts.append(_Tagged(Subset(data, train_idx.tolist()), i))
        val_parts.append(_Tagged(Subset(data, val_idx.tolist()), i))
    return stores, ConcatDataset(train_parts), ConcatDataset(val_parts)


def train(sparse_paths, target_paths, out_path: str | Path, cfg: dict, seed: int, iq_paths=None,
          progress: bool = True) -> tuple[list[dict], float]:  # fmt: skip
    """Train and write ``out_path`` (best checkpoint), ``last.pt``, ``metrics.csv`` and ``train.png`` beside it.
    Paths may be one store each or lists of stores (then ``iq_paths`` lists their IQ for the dense model).
    Returns the per-epoch rows (epoch 0: untrained) and the validation Dice of the trivial predictor."""
    out_path = Path(out_path)
    folder = out_path.parent
    stores, train_set, val_set = open_training_data(sparse_paths, target_paths, cfg["val_fraction"])
    block_shape = stores[0].block_shape
    spec = spec_from_config(cfg, len(block_shape) - 1)
    padded = spec.pad_shape(block_shape)  # one clear error for a block the network cannot take
    device = pick_device(cfg["device"])
    dense = None
    if cfg["model"] == "dense":
        if not iq_paths:
            raise UlmError("train.model = dense needs the iq.zarr the sparse stores were made from (--iq)")
        dense = [DenseBlocks(iq, s.sparse_path) for iq, s in zip(_as_list(iq_paths), stores, strict=True)]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=cfg["batch_size"], shuffle=True, generator=gen, collate_fn=_collate,
                        num_workers=cfg["num_workers"])  # fmt: skip
    val_loader = DataLoader(val_set, batch_size=cfg["batch_size"], collate_fn=_collate)
    net = build_net(spec, device)
    inputs = Inputs(spec, cfg["model"], padded, device, dense)
    plan = schedule.phases(cfg, spec)
    milestones, gamma = cfg["lr_milestones"], cfg["lr_gamma"]
    print(f"train: {cfg['model']} {spec.dims}D+t network, {n_parameters(net):,} parameters, {len(train_set)} training and "
          f"{len(val_set)} validation blocks from {len(stores)} store(s), {schedule.total_epochs(plan)} epochs in "
          f"{len(plan)} phase(s), device {device}", flush=True)  # fmt: skip
    meta = {"architecture": ARCHITECTURE, "spec": spec.as_dict(), "model_kind": cfg["model"], "block_shape": list(block_shape),
            "factor": stores[0].factor, "n_params": n_parameters(net), "train_config": cfg,
            "trivial_val_dice": trivial_dice(val_loader, stores[0].factor)}  # fmt: skip
    last = folder / "last.pt"
    run_key = _run_key(cfg, seed, stores, iq_paths if cfg["model"] == "dense" else [])
    state, best_model, opt_state = _resume(last, run_key, net, gen, cfg["resume"])
    phase_index = schedule.locate(plan, state.epoch + 1)[0] if state.epoch < schedule.total_epochs(plan) else len(plan) - 1
    opt, sched = schedule.optimizer(net.parameters(), plan[phase_index], milestones, gamma)
    if opt_state is not None:
        opt.load_state_dict(opt_state["optimizer"])
        sched.load_state_dict(opt_state["scheduler"])
    if state.epoch == 0:  # the untrained model, for reference
        state.rows.append(_row(0, 0, float("nan"), *_validate(net, val_loader, inputs, N_HR_STAGES), float("nan")))
    meta["untrained_val_dice"] = state.rows[0]["val_dice"]
    bar = tqdm(range(state.epoch + 1, schedule.total_epochs(plan) + 1), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        i, e = schedule.locate(plan, epoch)
        if e == 1 and epoch > 1:  # a new phase: fresh optimizer and schedule, as the reference
            opt, sched = schedule.optimizer(net.parameters(), plan[i], milestones, gamma)
        phase = plan[i]
        t0 = time.perf_counter()
        lr = sched.get_last_lr()[0]
        loss = _train_epoch(net, loader, inputs, opt, phase)
        sched.step()
        row = _row(epoch, i, loss, *_validate(net, val_loader, inputs, phase.net_phase), lr, time.perf_counter() - t0)
        state.rows.append(row)
        state.epoch = epoch
        if row["val_dice"] > state.best_dice:  # NaN (a cascaded stage without output) never is
            state.best_dice, state.best_epoch = row["val_dice"], epoch
            best_model = {k: v.detach().clone() for k, v in net.state_dict().items()}
        print(f"train: epoch {epoch}/{schedule.total_epochs(plan)} phase {i} lr {lr:.2g} loss {loss:.4f} "
              f"val Dice {row['val_dice']:.3f} ({row['seconds']:.1f} s)", flush=True)  # fmt: skip
        bar.set_postfix(loss=f"{loss:.3f}", dice=f"{row['val_dice']:.3f}")
        _save({**meta, "state": asdict(state), "model": net.state_dict(), "best_model": best_model, "optimizer": opt.state_dict(),
               "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(), "loader_rng": gen.get_state(),
               "run_key": run_key}, last, now=True)  # fmt: skip
    if best_model is None:  # no epoch with a validation Dice: keep the last weights
        best_model, state.best_epoch = net.state_dict(), state.epoch
    _save({**meta, "model": best_model, "epoch": state.best_epoch, "val_dice": state.best_dice}, out_path)
    _write_metrics([{**r, "trivial_val_dice": meta["trivial_val_dice"]} for r in state.rows], folder / "metrics.csv")
    from ulm.plots import plot_training

    plot_training(state.rows, folder / "train.png")
    return state.rows, meta["trivial_val_dice"]


def _resume(last: Path, run_key: str, net: ULMNet, gen: torch.Generator, resume: bool):
    """(state, best weights, optimizer + scheduler states) from ``last`` when it belongs to this run."""
    if not (resume and last.exists()):
        return TrainState(), None, None
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: start afresh rather than trust it
        print(f"train: {last} unreadable ({type(exc).__name__}); starting afresh", flush=True)
        return TrainState(), None, None
    old_key = ckpt.get("run_key") if isinstance(ckpt.get("run_key"), dict) else {}
    changed = [what for what in ("config", "data") if old_key.get(what) != run_key[what]]
    if ckpt.get("architecture") != ARCHITECTURE:
        changed.append("architecture")
    if changed:
        print(f"train: {last} belongs to another run (its {' and '.join(changed)} changed); starting afresh", flush=True)
        return TrainState(), None, None
    net.load_state_dict(ckpt["model"])
    torch.set_rng_state(ckpt["torch_rng"])
    gen.set_state(ckpt["loader_rng"])
    state = TrainState(**ckpt["state"])
    print(f"train: resuming after epoch {state.epoch}", flush=True)
    return state, ckpt["best_model"], {"optimizer": ckpt["optimizer"], "scheduler": ckpt["scheduler"]}


def _train_epoch(net: ULMNet, loader: DataLoader, inputs: Inputs, opt, phase: schedule.Phase) -> float:
    net.train()
    losses = []
    for batch in loader:
        opt.zero_grad()
        loss, _ = inputs.run(net, batch, phase.net_phase, phase.dilated)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _run_key(cfg: dict, seed: int, stores: list[SparseBlocks], iq_paths=()) -> dict[str, str]:
    """What a resumable run depends on: ``config`` (the training config but device and workers, and the
    seed) and ``data`` (the content digests the writers recorded in the training stores)."""
    relevant = {k: v for k, v in cfg.items() if k not in ("device", "num_workers", "resume", "threads", "gpus")}
    paths = [p for s in stores for p in (s.sparse_path, s.target_path)] + _as_list(iq_paths or [])
    return {"config": hashlib.sha256(json.dumps([relevant, seed], sort_keys=True, default=str).encode()).hexdigest(),
            "data": hashlib.sha256(" ".join(store_digest(p) for p in paths).encode()).hexdigest()}  # fmt: skip


class _Tagged(Dataset):
    """Adds the store and block index to each item (the dense baseline reads the same block from iq.zarr)."""

    def __init__(self, subset: Subset, store: int):
        self.subset, self.store = subset, store

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, i: int) -> dict:
        return {**self.subset[i], "store": self.store, "block": self.subset.indices[i]}


def _collate(items: list[dict]) -> dict:
    return {**collate_sparse(items), "store": torch.tensor([it["store"] for it in items]),
            "block": torch.tensor([it["block"] for it in items])}  # fmt: skip


@torch.no_grad()
def _validate(net: ULMNet, loader: DataLoader, inputs: Inputs, net_phase: int) -> tuple[float, float]:
    """Validation loss and hard Dice (prediction > 0.5 vs target, sites pooled over all blocks); the
    Dice is NaN in a cascaded stage, which has no output yet."""
    net.eval()
    losses, counts = [], np.zeros(3, np.int64)
    for batch in loader:
        loss, pred = inputs.run(net, batch, net_phase, predict=True)
        losses.append(loss.item())
        if pred is not None:
            counts += dice_counts(pred, batch["target_indices"])
    dice = float(2 * counts[0] / max(counts[1] + counts[2], 1)) if net_phase == N_HR_STAGES else math.nan
    return float(np.mean(losses)), dice


def trivial_dice(loader: DataLoader, factor: int) -> float:
    """Dice of the trivial predictor: every fine pixel under a kept input site (the sparse input
    projected over time and upsampled by ``factor``)."""
    counts = np.zeros(3, np.int64)
    for batch in loader:
        sites = torch.unique(batch["indices"][:, [0, *range(2, batch["indices"].shape[1])]], dim=0)
        dims = sites.shape[1] - 1
        offsets = torch.cartesian_prod(*[torch.arange(factor)] * dims).reshape(-1, dims)
        fine = sites[:, None, 1:] * factor + offsets[None]
        pred = torch.cat([sites[:, :1, None].expand(-1, len(offsets), 1), fine], dim=2).reshape(-1, dims + 1)
        counts += dice_counts(pred, batch["target_indices"])
    return float(2 * counts[0] / max(counts[1] + counts[2], 1))


def _row(epoch: int, phase: int, train_loss: float, val_loss: float, val_dice: float, lr: float, seconds: float = 0.0) -> dict:
    return {"epoch": epoch, "phase": phase, "lr": lr, "train_loss": train_loss, "val_loss": val_loss, "val_dice": val_dice,
            "seconds": seconds}  # fmt: skip


def _write_metrics(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
