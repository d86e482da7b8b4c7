"""`ulm train`: fit the sparse (or dense) super-resolution network on sparse.zarr + target.zarr.

Adam with a step learning-rate schedule (MultiStepLR: multiplied by ``lr_gamma`` once at each
milestone, never compounding every epoch), validation Dice every epoch on the last blocks in time,
``model.pt`` rewritten only when the validation Dice strictly improves, ``last.pt`` every epoch for
resuming, ``metrics.csv`` (epoch 0 is the untrained model) and a loss / Dice plot.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ulm.dataset import DenseBlocks, SparseBlocks, collate_sparse
from ulm.errors import UlmError
from ulm.nn.dense_net import DenseULMNet, pad_to
from ulm.nn.loss import dense_loss, dense_targets, pooled_target_keys, sparse_loss, supervised_scales
from ulm.nn.spec import NetSpec
from ulm.sparse import held_out_start
from ulm.store import atomic_path


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UlmError("train.device = cuda but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def build_net(spec: NetSpec, model: str, device: torch.device) -> torch.nn.Module:
    """The sparse net (spconv's default algorithm on CUDA, ConvAlgo.Native on CPU) or the dense twin."""
    if model == "dense":
        return DenseULMNet(spec).to(device)
    from spconv.core import ConvAlgo

    from ulm.nn.sparse_net import SparseULMNet

    return SparseULMNet(spec, algo=None if device.type == "cuda" else ConvAlgo.Native).to(device)


def spec_from_config(cfg: dict, dims: int) -> NetSpec:
    if cfg["prune"] and not cfg["deep_supervision"]:
        raise UlmError("train.prune needs train.deep_supervision: the pruning classifiers are trained by the per-scale Dice")
    return NetSpec(dims=dims, width=cfg["width"], kernel=cfg["kernel"], prune=cfg["prune"],
                   prune_threshold=cfg["prune_threshold"], deep_supervision=cfg["deep_supervision"])  # fmt: skip


@dataclass
class Batches:
    """Moves collated batches to the network's input format (sparse tensor or dense array)."""

    spec: NetSpec
    model: str
    block_shape: tuple[int, ...]
    device: torch.device
    dense: DenseBlocks | None = None

    @property
    def padded(self) -> tuple[int, ...]:
        return self.spec.pad_shape(self.block_shape)

    def run(
        self, net: torch.nn.Module, batch: dict, train: bool, scales: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, and the binarised final prediction as (M, 1 + D) site indices, and the target indices."""
        space = self.padded[1:]
        target = batch["target_indices"].to(self.device)
        if self.model == "dense":
            x = torch.stack([self.dense[int(i)] for i in batch["block"]]).to(self.device)
            outputs = net(pad_to(x, self.padded))
            loss = dense_loss(outputs, dense_targets(target.cpu(), batch["batch_size"], space, self.spec.n_up), scales)
            pred = torch.nonzero(outputs[-1] > 0)
            return loss, pred, target
        import spconv.pytorch as spconv

        x = spconv.SparseConvTensor(
            batch["features"].to(self.device), batch["indices"].to(self.device), list(self.padded), batch["batch_size"]
        )
        keys = pooled_target_keys(target, space, self.spec.n_up)
        outputs = net(x, target=keys if train else None)
        loss = sparse_loss(outputs, keys, space, scales)
        indices, logits = outputs[-1]
        return loss, indices[logits > 0], target


def dice_counts(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """(|P and G|, |P|, |G|) of two site-index sets."""
    p = {tuple(r) for r in pred.cpu().tolist()}
    g = {tuple(r) for r in target.cpu().tolist()}
    return np.array([len(p & g), len(p), len(g)], dtype=np.int64)


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train(sparse_path: str | Path, target_path: str | Path, out_path: str | Path, cfg: dict, seed: int,
          iq_path: str | Path | None = None, progress: bool = True) -> tuple[list[dict], float]:  # fmt: skip
    """Train and write ``out_path`` (best checkpoint), ``last.pt``, ``metrics.csv`` and ``train.png`` beside it.
    Returns the per-epoch rows (epoch 0: untrained) and the validation Dice of the trivial predictor."""
    out_path = Path(out_path)
    folder = out_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    data = SparseBlocks(sparse_path, target_path)
    dims = len(data.block_shape) - 1
    spec = spec_from_config(cfg, dims)
    device = pick_device(cfg["device"])
    if cfg["model"] == "dense" and iq_path is None:
        raise UlmError("train.model = dense needs the iq.zarr the sparse store was made from (--iq)")
    starts = data.origins[:, 0]
    first_val = held_out_start(int(starts.max()) + data.block_shape[0], data.block_shape[0], cfg["val_fraction"])
    train_idx, val_idx = np.flatnonzero(starts < first_val), np.flatnonzero(starts >= first_val)
    if len(train_idx) == 0:
        raise UlmError(
            f"{sparse_path}: {len(data)} blocks, too few to hold out the last {cfg['val_fraction']:.0%} in time for validation"
        )
    train_set, val_set = Subset(data, train_idx.tolist()), Subset(data, val_idx.tolist())
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(_Indexed(train_set), batch_size=cfg["batch_size"], shuffle=True, generator=gen,
                        collate_fn=_collate, num_workers=cfg["num_workers"])  # fmt: skip
    val_loader = DataLoader(_Indexed(val_set), batch_size=cfg["batch_size"], collate_fn=_collate)
    net = build_net(spec, cfg["model"], device)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"train: {cfg['model']} {dims}D+t network, {n_params:,} parameters, device {device}", flush=True)
    batches = Batches(
        spec, cfg["model"], data.block_shape, device, DenseBlocks(iq_path, sparse_path) if cfg["model"] == "dense" else None
    )
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg["lr_milestones"], gamma=cfg["lr_gamma"])
    state = {"epoch": 0, "best_dice": -1.0, "rows": []}
    last = folder / "last.pt"
    run_key = _run_key(cfg, seed, data)
    ckpt = torch.load(last, map_location=device, weights_only=False) if cfg["resume"] and last.exists() else None
    if ckpt is not None and ckpt.get("run_key") != run_key:  # another configuration or other data: start afresh
        print(f"train: {last} belongs to another run (config or data changed); starting afresh", flush=True)
        ckpt = None
    if ckpt is not None:
        if ckpt["spec"] != spec.as_dict() or ckpt["model_kind"] != cfg["model"]:
            raise UlmError(f"{last}: checkpoint of another architecture; delete it or set train.resume=false")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        gen.set_state(ckpt["loader_rng"])
        state = {k: ckpt[k] for k in ("epoch", "best_dice", "rows")}
        print(f"train: resuming after epoch {state['epoch']}", flush=True)
    meta = {"spec": spec.as_dict(), "model_kind": cfg["model"], "block_shape": list(data.block_shape), "factor": data.factor,
            "n_params": n_params, "train_config": cfg}  # fmt: skip
    meta["trivial_val_dice"] = trivial_dice(val_loader, data.factor)
    if state["epoch"] == 0:  # the untrained model, for reference
        state["rows"].append(_epoch_row(0, float("nan"), *_validate(net, val_loader, batches), sched))
    meta["untrained_val_dice"] = state["rows"][0]["val_dice"]
    bar = tqdm(range(state["epoch"] + 1, cfg["epochs"] + 1), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        stage = min(spec.n_up, (epoch - 1) * (spec.n_up + 1) // cfg["epochs"]) if cfg["cascaded"] else None
        scales = supervised_scales(spec.n_up, spec.deep_supervision, stage)
        net.train()
        losses = []
        for batch in loader:
            opt.zero_grad()
            loss, _, _ = batches.run(net, batch, True, scales)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        row = _epoch_row(epoch, float(np.mean(losses)), *_validate(net, val_loader, batches), sched, time.perf_counter() - t0)
        sched.step()
        state["rows"].append(row)
        state["epoch"] = epoch
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", dice=f"{row['val_dice']:.3f}")
        if row["val_dice"] > state["best_dice"]:
            state["best_dice"] = row["val_dice"]
            _save({**meta, "model": net.state_dict(), "epoch": epoch, "val_dice": row["val_dice"]}, out_path)
        _save({**meta, **state, "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "torch_rng": torch.get_rng_state(), "loader_rng": gen.get_state(), "run_key": run_key}, last)  # fmt: skip
    if not out_path.exists():  # every epoch had Dice <= the untrained one: keep the last weights
        _save({**meta, "model": net.state_dict(), "epoch": state["epoch"], "val_dice": state["rows"][-1]["val_dice"]}, out_path)
    _write_metrics(state["rows"], folder / "metrics.csv")
    from ulm.plots import plot_training

    plot_training(state["rows"], folder / "train.png")
    return state["rows"], meta["trivial_val_dice"]


def _run_key(cfg: dict, seed: int, data: SparseBlocks) -> str:
    """What a resumable run depends on: the training config (not device or workers), seed and data."""
    import hashlib
    import json

    relevant = {k: v for k, v in cfg.items() if k not in ("device", "num_workers", "resume", "epochs")}
    store = data._open()[0]
    fingerprint = [relevant, seed, store.offsets.tolist(), store.origin.tolist(), str(data.sparse_path), str(data.target_path)]
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


class _Indexed(torch.utils.data.Dataset):
    """Adds the block index to each item (the dense baseline reads the same block from iq.zarr)."""

    def __init__(self, subset: Subset):
        self.subset = subset

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, i: int) -> dict:
        return {**self.subset[i], "block": self.subset.indices[i]}


def _collate(items: list[dict]) -> dict:
    return {**collate_sparse(items), "block": torch.tensor([it["block"] for it in items])}


@torch.no_grad()
def _validate(net: torch.nn.Module, loader: DataLoader, batches: Batches) -> tuple[float, float]:
    """Validation loss and hard Dice (prediction > 0.5 vs target, sites pooled over all blocks)."""
    net.eval()
    losses, counts = [], np.zeros(3, np.int64)
    for batch in loader:
        loss, pred, target = batches.run(net, batch, False, [batches.spec.n_up])
        losses.append(loss.item())
        counts += dice_counts(pred, target)
    return float(np.mean(losses)), float(2 * counts[0] / max(counts[1] + counts[2], 1))


def trivial_dice(loader: DataLoader, factor: int) -> float:
    """Dice of the trivial predictor: every fine pixel under a kept input site (the thresholded input
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


def _epoch_row(epoch: int, train_loss: float, val_loss: float, val_dice: float, sched, seconds: float = 0.0) -> dict:
    return {"epoch": epoch, "lr": sched.get_last_lr()[0], "train_loss": train_loss, "val_loss": val_loss,
            "val_dice": val_dice, "seconds": seconds}  # fmt: skip


def _write_metrics(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
