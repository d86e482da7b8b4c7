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

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ulm.errors import UlmError
from ulm.nn import schedule
from ulm.nn.checkpoint import ARCHITECTURE, build_net, pick_device, spec_from_config, stamp
from ulm.nn.data import DenseBlocks, SparseBlocks, as_paths, collate_tagged, open_training_data
from ulm.nn.loss import network_loss, pad_to, prediction
from ulm.nn.network import ULMNet, n_parameters
from ulm.nn.spec import N_HR_STAGES, NetSpec
from ulm.store import save_torch, store_digest, write_csv


@dataclass
class Inputs:
    """Turns collated batches into the network's input (sparse tensor, or dense padded blocks)."""

    spec: NetSpec
    model: str
    padded: tuple[int, ...]
    device: torch.device
    dense: list[DenseBlocks] | None = None

    def run(
        self, net: ULMNet, batch: dict, phase: int, dilated: bool = False, predict: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Loss, and with ``predict`` (at the whole network's phase) the binarised prediction's (M, 1 + D) sites."""
        target = batch["target_indices"].to(self.device).long()
        if self.model == "dense":
            x = torch.stack([self.dense[int(s)][int(b)] for s, b in zip(batch["store"], batch["block"], strict=True)])
            levels = net(pad_to(x, self.padded).to(self.device), phase=phase)
        else:
            import spconv.pytorch as spconv

            x = spconv.SparseConvTensor(
                batch["features"].to(self.device), batch["indices"].to(self.device), list(self.padded), batch["batch_size"]
            )
            levels = net(x, phase=phase)
        loss = network_loss(levels, target, self.spec, phase, dilated)
        pred = prediction(levels[-1])[0] if predict and phase == N_HR_STAGES else None
        return loss, pred


PERSISTED = ("epoch", "best_dice", "best_epoch", "rows")  # the fields of TrainState saved as last.pt's "state"


@dataclass
class TrainState:
    """Where a run is: after which ``epoch``, its best validation Dice and epoch so far, one row per epoch
    (epoch 0: untrained) and the best epoch's weights. Saved in last.pt every epoch, resumed from it."""

    epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    rows: list[dict] = field(default_factory=list)
    best_model: dict[str, torch.Tensor] | None = None  # saved beside "state" in last.pt

    def saved(self) -> dict:
        """last.pt's ``state``: the :data:`PERSISTED` fields, copied (as ``dataclasses.asdict`` would)."""
        return {name: copy.deepcopy(getattr(self, name)) for name in PERSISTED}


@dataclass
class TrainRun:
    """What one training run works with (made by :func:`setup`); ``opt`` and ``sched`` change per phase."""

    folder: Path
    stores: list[SparseBlocks]
    spec: NetSpec
    device: torch.device
    gen: torch.Generator  # the training loader's shuffling
    loader: DataLoader
    val_loader: DataLoader
    net: ULMNet
    inputs: Inputs
    plan: list[schedule.Phase]
    milestones: list[int]
    gamma: float
    meta: dict  # written into every checkpoint
    run_key: dict[str, str]
    opt: torch.optim.Optimizer | None = None
    sched: torch.optim.lr_scheduler.LRScheduler | None = None

    @property
    def total_epochs(self) -> int:
        """Epochs of all phases together."""
        return schedule.total_epochs(self.plan)

    def new_optimizer(self, phase_index: int) -> None:
        """A fresh Adam and MultiStepLR for phase ``phase_index`` (as the reference, at every phase)."""
        self.opt, self.sched = schedule.optimizer(self.net.parameters(), self.plan[phase_index], self.milestones, self.gamma)


def dice_counts(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """(|P and G|, |P|, |G|) of two site-index sets."""
    p = {tuple(r) for r in pred.cpu().tolist()}
    g = {tuple(r) for r in target.cpu().tolist()}
    return np.array([len(p & g), len(p), len(g)], dtype=np.int64)


def train(
    sparse_paths, target_paths, out_path: str | Path, cfg: dict, seed: int, iq_paths=None, progress: bool = True
) -> tuple[list[dict], float]:
    """Train and write ``out_path`` (best checkpoint), ``last.pt``, ``metrics.csv`` and ``train.png`` beside it.
    Paths may be one store each or lists of stores (then ``iq_paths`` lists their IQ for the dense model).
    Returns the per-epoch rows (epoch 0: untrained) and the validation Dice of the trivial predictor."""
    out_path = Path(out_path)
    run = setup(sparse_paths, target_paths, out_path.parent, cfg, seed, iq_paths)
    state = start(run, cfg["resume"])
    bar = tqdm(range(state.epoch + 1, run.total_epochs + 1), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        row = run_epoch(run, state, epoch)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", dice=f"{row['val_dice']:.3f}")
        save_last(run, state)
    finish(run, state, out_path)
    return state.rows, run.meta["trivial_val_dice"]


def setup(sparse_paths, target_paths, folder: Path, cfg: dict, seed: int, iq_paths=None) -> TrainRun:
    """Open the stores, seed, and build the loaders, the network and the checkpoints' metadata (the trivial
    predictor's validation Dice included)."""
    stores, train_set, val_set = open_training_data(sparse_paths, target_paths, cfg["val_fraction"])
    block_shape = stores[0].block_shape
    spec = spec_from_config(cfg, len(block_shape) - 1)
    padded = spec.pad_shape(block_shape)  # one clear error for a block the network cannot take
    device = pick_device(cfg["device"])
    dense = None
    if cfg["model"] == "dense":
        if not iq_paths:
            raise UlmError("train.model = dense needs the iq.zarr the sparse stores were made from (--iq)")
        dense = [DenseBlocks(iq, s.sparse_path) for iq, s in zip(as_paths(iq_paths), stores, strict=True)]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        train_set,
        batch_size=cfg["batch_size"],
        shuffle=True,
        generator=gen,
        collate_fn=collate_tagged,
        num_workers=cfg["num_workers"],
    )
    val_loader = DataLoader(val_set, batch_size=cfg["batch_size"], collate_fn=collate_tagged)
    net = build_net(spec, device)
    plan = schedule.phases(cfg, spec)
    print(
        f"train: {cfg['model']} {spec.dims}D+t network, {n_parameters(net):,} parameters, {len(train_set)} training and "
        f"{len(val_set)} validation blocks from {len(stores)} store(s), {schedule.total_epochs(plan)} epochs in "
        f"{len(plan)} phase(s), device {device}",
        flush=True,
    )
    meta = {
        "architecture": ARCHITECTURE,
        "spec": spec.as_dict(),
        "model_kind": cfg["model"],
        "block_shape": list(block_shape),
        "factor": stores[0].factor,
        "n_params": n_parameters(net),
        "train_config": cfg,
        "trivial_val_dice": trivial_dice(val_loader, stores[0].factor),
    }
    run_key = _run_key(cfg, seed, stores, iq_paths if cfg["model"] == "dense" else [])
    inputs = Inputs(spec, cfg["model"], padded, device, dense)
    return TrainRun(
        folder,
        stores,
        spec,
        device,
        gen,
        loader,
        val_loader,
        net,
        inputs,
        plan,
        cfg["lr_milestones"],
        cfg["lr_gamma"],
        meta,
        run_key,
    )


def start(run: TrainRun, resume: bool) -> TrainState:
    """Resume from last.pt when it belongs to this run (else start afresh and score the untrained model as
    epoch 0); make the current phase's optimizer and schedule."""
    state, opt_state = _resume(run.folder / "last.pt", run.run_key, run.net, run.gen, resume)
    phase_index = schedule.locate(run.plan, state.epoch + 1)[0] if state.epoch < run.total_epochs else len(run.plan) - 1
    run.new_optimizer(phase_index)
    if opt_state is not None:
        run.opt.load_state_dict(opt_state["optimizer"])
        run.sched.load_state_dict(opt_state["scheduler"])
    if state.epoch == 0:  # the untrained model, for reference
        state.rows.append(_row(0, 0, float("nan"), *_validate(run.net, run.val_loader, run.inputs, N_HR_STAGES), float("nan")))
    run.meta["untrained_val_dice"] = state.rows[0]["val_dice"]
    return state


def run_epoch(run: TrainRun, state: TrainState, epoch: int) -> dict:
    """Train one epoch (a new phase starts with a fresh optimizer), validate, keep the best weights; the epoch's row."""
    i, e = schedule.locate(run.plan, epoch)
    if e == 1 and epoch > 1:  # a new phase: fresh optimizer and schedule, as the reference
        run.new_optimizer(i)
    phase = run.plan[i]
    t0 = time.perf_counter()
    lr = run.sched.get_last_lr()[0]
    loss = _train_epoch(run.net, run.loader, run.inputs, run.opt, phase)
    run.sched.step()
    row = _row(epoch, i, loss, *_validate(run.net, run.val_loader, run.inputs, phase.net_phase), lr, time.perf_counter() - t0)
    state.rows.append(row)
    state.epoch = epoch
    if row["val_dice"] > state.best_dice:  # NaN (a cascaded stage without output) never is
        state.best_dice, state.best_epoch = row["val_dice"], epoch
        state.best_model = {k: v.detach().clone() for k, v in run.net.state_dict().items()}
    print(
        f"train: epoch {epoch}/{run.total_epochs} phase {i} lr {lr:.2g} loss {loss:.4f} "
        f"val Dice {row['val_dice']:.3f} ({row['seconds']:.1f} s)",
        flush=True,
    )
    return row


def save_last(run: TrainRun, state: TrainState) -> None:
    """last.pt: everything needed to resume after ``state.epoch``, written at once (outside the stage's transaction)."""
    ckpt = {
        **run.meta,
        "state": state.saved(),
        "model": run.net.state_dict(),
        "best_model": state.best_model,
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "loader_rng": run.gen.get_state(),
        "run_key": run.run_key,
    }
    save_torch(stamp(ckpt), run.folder / "last.pt", now=True)


def finish(run: TrainRun, state: TrainState, out_path: Path) -> None:
    """``out_path`` (the best epoch's weights, or the last ones when no epoch has a validation Dice),
    ``metrics.csv`` and ``train.png``."""
    if state.best_model is None:  # no epoch with a validation Dice: keep the last weights
        state.best_model, state.best_epoch = run.net.state_dict(), state.epoch
    ckpt = {**run.meta, "model": state.best_model, "epoch": state.best_epoch, "val_dice": state.best_dice}
    save_torch(stamp(ckpt), out_path)
    write_csv(run.folder / "metrics.csv", [{**r, "trivial_val_dice": run.meta["trivial_val_dice"]} for r in state.rows])
    from ulm.plots import plot_training

    plot_training(state.rows, run.folder / "train.png")


def _resume(
    last: Path, run_key: dict[str, str], net: ULMNet, gen: torch.Generator, resume: bool
) -> tuple[TrainState, dict | None]:
    """(state, optimizer + scheduler states) from ``last`` when it belongs to this run; the network's weights
    and the random generators are restored from it too."""
    if not (resume and last.exists()):
        return TrainState(), None
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: start afresh rather than trust it
        print(f"train: {last} unreadable ({type(exc).__name__}); starting afresh", flush=True)
        return TrainState(), None
    if not isinstance(ckpt, dict):
        ckpt = {}
    old_key = ckpt.get("run_key") if isinstance(ckpt.get("run_key"), dict) else {}
    changed = [what for what in ("config", "data") if old_key.get(what) != run_key[what]]
    if ckpt.get("architecture") != ARCHITECTURE:
        changed.append("architecture")
    if changed:
        print(f"train: {last} belongs to another run (its {' and '.join(changed)} changed); starting afresh", flush=True)
        return TrainState(), None
    fresh = {k: v.clone() for k, v in net.state_dict().items()}, torch.get_rng_state(), gen.get_state()
    try:
        state = TrainState(**{name: ckpt["state"][name] for name in PERSISTED}, best_model=ckpt["best_model"])
        net.load_state_dict(ckpt["model"])
        torch.set_rng_state(ckpt["torch_rng"])
        gen.set_state(ckpt["loader_rng"])
        opt_state = {"optimizer": ckpt["optimizer"], "scheduler": ckpt["scheduler"]}
    except Exception as exc:  # the key matches but the content does not: never resume from it
        print(f"train: {last} is incomplete ({type(exc).__name__}); starting afresh", flush=True)
        net.load_state_dict(fresh[0])
        torch.set_rng_state(fresh[1])
        gen.set_state(fresh[2])
        return TrainState(), None
    print(f"train: resuming after epoch {state.epoch}", flush=True)
    return state, opt_state


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
    paths = [p for s in stores for p in (s.sparse_path, s.target_path)] + as_paths(iq_paths or [])
    return {
        "config": hashlib.sha256(json.dumps([relevant, seed], sort_keys=True, default=str).encode()).hexdigest(),
        "data": hashlib.sha256(" ".join(store_digest(p) for p in paths).encode()).hexdigest(),
    }


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
    return {
        "epoch": epoch,
        "phase": phase,
        "lr": lr,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_dice": val_dice,
        "seconds": seconds,
    }
