"""The training loop: one function, :func:`train_model`, used by ``twinv2 train``, the demo and the
benchmarks.

What a run does:

1. the temporal split (:meth:`TemporalSplit.from_fractions` on the event timestamps, fractions from the
   config), training samples from the train window (seeded subsample of ``data.max_train_samples``) and
   validation samples from the valid window;
2. batches sliced from the CSR histories by :class:`BatchBuilder` with
   ``SequenceConfig(long_len=L, short_len=model.short_len, long_source=model.long_source())``, on the
   training thread or ahead of it by ``train.loader_workers`` worker processes (:mod:`twinv2.train.pipeline`;
   the same batches either way);
3. embedding tables and dense parameters optimised separately (Adagrad + Adam by default, as in the
   papers), binary cross-entropy on the logits, optional gradient clipping of the dense parameters,
   optional sparse gradients for the lookup tables (``optim.sparse_embeddings``) and mixed precision
   (``train.amp``);
4. validation GAUC after every epoch (or every ``train.eval_every`` steps); ``best.pt`` is rewritten on
   improvement, ``last.pt`` at every validation; training stops after ``train.patience`` validations
   without improvement;
5. Ctrl-C finishes the current step, writes ``last.pt`` with the position inside the epoch and stops;
   ``resume=True`` continues from ``last.pt`` exactly (the epoch order is derived from (seed, epoch), the
   torch RNG state and the optimiser states are restored).

The run folder holds ``config.yaml`` (resolved config), ``best.pt``, ``last.pt`` and ``history.json``
(validations and the running-loss curve).

Started by ``torchrun --nproc-per-node N -m twinv2 train ...`` (or ``twinv2 train --nproc N``), the same
function runs on every rank: each trains on its part of every global batch under
``DistributedDataParallel``, validation metrics are computed on the union of the ranks' predictions, and
rank 0 alone writes the run folder (:mod:`twinv2.train.distributed`). ``resume`` works with any number of
ranks: the position in the run is counted in global batches.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from rich.console import Console
from torch import nn

from twinv2._io import atomic_file, write_json_atomic
from twinv2._progress import make_progress
from twinv2.data.batches import BatchBuilder, SequenceConfig
from twinv2.data.split import make_samples
from twinv2.data.store import Dataset, dataset_identity, load_dataset
from twinv2.errors import CheckpointError, ConfigError
from twinv2.models import CTRModel, build_model
from twinv2.train._runtime import resolve_device, torch_threads
from twinv2.train.checkpoint import (
    check_dataset_matches,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from twinv2.train.config import TrainConfig, config_from_dict, config_to_dict
from twinv2.train.diagnostics import has_learned_gsu, retrieval_diagnostics
from twinv2.train.distributed import (
    DistContext,
    all_sum,
    check_same_inputs,
    collective_errors,
    evaluate_sharded,
    setup_distributed,
    teardown_distributed,
)
from twinv2.train.inputs import CompressedPaths, make_split, open_compressed, open_compressed_versions
from twinv2.train.pipeline import EpochBatches, LocalBatch, auto_loader_workers, epoch_batches

__all__ = ["RESUMABLE_KEYS", "TrainResult", "config_for_resume", "make_split", "open_compressed", "run_training",
           "split_parameters", "train_model"]

BEST_FILE, LAST_FILE, HISTORY_FILE, CONFIG_FILE = "best.pt", "last.pt", "history.json", "config.yaml"
# Config keys that may change between a run and its resumption (they do not change the trajectory up to
# the point where the run stopped).
RESUMABLE_KEYS = ("train.epochs", "train.patience", "train.device", "train.num_threads",
                  "train.eval_batch_size", "train.max_steps", "train.loader_workers", "train.dist_timeout",
                  "train.amp")
_LOSS_POINTS = 200  # about this many points of running loss are kept for the loss curve
# DDP without a buffer broadcast at every forward (the buffers never change): the keyword is
# forward_sync_buffers from torch 2.13 on, broadcast_buffers before.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        history: one dict per validation (epoch, step, train_loss and the validation metrics).
        best: the validation metrics of the best checkpoint (empty when no validation ran).
        loss_curve: ``[step, running loss]`` pairs.
    """

    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]
    best: dict[str, Any]
    loss_curve: list[list[float]]
    steps: int
    epochs_completed: int
    stopped_early: bool
    interrupted: bool
    num_train_samples: int
    num_valid_samples: int
    train_seconds: float
    samples_per_second: float
    extra: dict[str, Any] = field(default_factory=dict)


def split_parameters(model: CTRModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(embedding-table parameters, dense parameters) with ``requires_grad``, each parameter in one list."""
    return [p for p in model.embedding_parameters() if p.requires_grad], model.dense_parameters()


def _optimizer(name: str, params: list[nn.Parameter], lr: float, weight_decay: float,
               initial_accumulator: float = 0.0) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay,
                                   initial_accumulator_value=initial_accumulator)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


class _StopFlag:
    """Ctrl-C sets a flag checked between steps, so the run stops at a clean point and saves ``last.pt``.
    A second Ctrl-C interrupts immediately."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _diff_keys(a: TrainConfig, b: TrainConfig) -> list[str]:
    da, db = config_to_dict(a), config_to_dict(b)
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k]]


def _epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of one epoch, a function of (seed, epoch) only (so resuming can rebuild it)."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def _write_config(path: Path, config: TrainConfig, extra: dict[str, Any]) -> None:
    with atomic_file(path, "w") as fh:
        fh.write("# Resolved training config (every key); reuse with --config.\n")
        for key, value in extra.items():
            fh.write(f"# {key}: {value}\n")
        yaml.safe_dump(config_to_dict(config), fh, sort_keys=False)


def train_model(dataset: str | os.PathLike | Dataset, out: str | os.PathLike, config: TrainConfig, *,
                compressed: CompressedPaths | None = None, resume: bool = False, overwrite: bool = False,
                show_progress: bool = True, console: Console | None = None) -> TrainResult:
    """Train ``config.model.long_term`` on ``dataset`` and write a run folder at ``out``.

    Under ``torchrun`` (or in a process group the caller created) every rank calls this with the same
    arguments; rank 0 prints and writes the run folder, and every rank returns once it is written, with the
    same steps, losses and validation metrics (rank 0's history also holds the GSU diagnostics).

    Args:
        dataset: dataset folder or a loaded :class:`Dataset`.
        out: run folder (created); holds ``best.pt``, ``last.pt``, ``history.json``, ``config.yaml``.
            With several machines it must be one shared folder (every rank reads ``last.pt`` on resume).
        config: the full config; with ``resume`` it must equal the saved one except for
            :data:`RESUMABLE_KEYS`.
        compressed: compressed life-cycle folder, required by models that read them (``twinv2``); or a
            list of versions of it (the offline job on a cadence inside the train window: each sample reads
            the latest version built before it, so training sees the raw/virtual mix that serving sees).
        resume: continue from ``out/last.pt`` (with any number of ranks).
        overwrite: allow writing into a folder that already holds a run (without resuming it).
    Raises:
        ConfigError, CompressionError, CheckpointError, DataValidationError (empty split),
        DistributedError (another rank died or a collective timed out).
    """
    device = resolve_device(config.train.device)
    ctx, device = setup_distributed(device, config.train.dist_timeout)
    try:
        return _train(dataset, Path(out), config, device, ctx, compressed=compressed, resume=resume,
                      overwrite=overwrite, show_progress=show_progress and ctx.is_main,
                      console=(console or Console(stderr=True)) if ctx.is_main else Console(file=io.StringIO()))
    finally:
        teardown_distributed(ctx)


def _amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """``train.amp`` -> (autocast dtype or None, gradient scaler for fp16 or None)."""
    if amp == "none":
        return None, None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"train.amp=fp16 needs a CUDA device (training on {device}); use train.amp=bf16 "
                              "or none")
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def _train(dataset: str | os.PathLike | Dataset, out: Path, config: TrainConfig, device: torch.device,
           ctx: DistContext, *, compressed: CompressedPaths | None, resume: bool, overwrite: bool,
           show_progress: bool, console: Console) -> TrainResult:
    """:func:`train_model` on this rank, once the process group and device are set."""
    last_path, best_path = out / LAST_FILE, out / BEST_FILE
    if not isinstance(dataset, Dataset):
        dataset = load_dataset(dataset)
    manifest = dataset.manifest

    saved: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise CheckpointError(f"{last_path}: nothing to resume (no last checkpoint in {out})")
        _, info = load_checkpoint(last_path)
        check_dataset_matches(info, dataset)
        changed = [k for k in _diff_keys(info.config, config) if k not in RESUMABLE_KEYS]
        if changed:
            raise ConfigError(f"--resume: the config differs from the run in {out} in {', '.join(changed)} "
                              f"(only {', '.join(RESUMABLE_KEYS)} may change)")
        saved = read_checkpoint(last_path)
        if compressed is None:
            compressed = info.compressed_path
        split = info.split
    elif last_path.exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a training run; pass --resume to continue it or choose "
                              "another --out")
    else:
        split = make_split(dataset, config)

    amp_dtype, scaler = _amp_settings(config.train.amp, device)
    max_steps = config.train.max_steps
    model_name = config.model.long_term
    seed = config.train.seed
    with torch_threads(config.train.num_threads, ctx.local_world_size) as threads:
        torch.manual_seed(seed)
        model = build_model(config.model, manifest, dataset.items)
        if config.optim.sparse_embeddings:
            for table in model.lookup_tables():
                table.sparse = True  # read by nn.Embedding.forward at every call
            # Adagrad builds sparse updates without checking their invariants (torch's default); saying so
            # explicitly keeps torch from warning about it at the first step.
            torch.sparse.check_sparse_tensor_invariants.disable()
        model = model.to(device)
        seq = SequenceConfig(long_len=config.data.long_len, short_len=config.model.short_len,
                             long_source=model.long_source(), raw_cap=config.data.raw_cap)
        comp = None
        if seq.long_source == "compressed":
            comp = open_compressed_versions(compressed, dataset, split.snapshot_ts, model_name=model_name)
        elif compressed is not None and not resume:
            console.print(f"note: model '{model_name}' reads raw behaviors; --compressed is ignored")
            compressed = None
        builder = BatchBuilder(dataset, seq, comp)
        train_samples = make_samples(dataset, split, "train", max_samples=config.data.max_train_samples, seed=seed)
        valid_samples = make_samples(dataset, split, "valid", max_samples=config.data.max_valid_samples,
                                     seed=seed)
        valid_start, _ = split.window("valid")
        # Every rank must read the same data (several machines: the same folders on each node).
        check_same_inputs(f"dataset {dataset_identity(dataset)}, split {split.to_dict()}, {len(train_samples)} "
                          f"train and {len(valid_samples)} validation samples, compressed snapshots "
                          f"{[c.snapshot_ts for c in comp or []]} of {[c.num_clusters for c in comp or []]} clusters",
                          ctx)

        emb_params, dense_params = split_parameters(model)
        opt_emb = _optimizer(config.optim.embedding, emb_params, config.optim.embedding_lr,
                             config.optim.weight_decay, config.optim.embedding_initial_accumulator
                             ) if emb_params else None
        opt_dense = _optimizer(config.optim.dense, dense_params, config.optim.dense_lr, config.optim.weight_decay)

        state: dict[str, Any] = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best_gauc": -math.inf,
                                 "best_step": -1, "bad_validations": 0, "stopped_early": False,
                                 "history": [], "loss_curve": [], "train_seconds": 0.0, "samples_seen": 0,
                                 "running_loss": None, "best": {}}
        if saved is not None:
            ts = saved["train_state"]
            model.load_state_dict(saved["model_state"])
            for key in state:
                if key in ts:
                    state[key] = ts[key]
            if opt_emb is not None:
                opt_emb.load_state_dict(ts["optimizer_embedding"])
            opt_dense.load_state_dict(ts["optimizer_dense"])
            if scaler is not None and "grad_scaler" in ts:
                scaler.load_state_dict(ts["grad_scaler"])
            torch.set_rng_state(ts["torch_rng"])
            if device.type == "cuda" and "cuda_rng" in ts:
                torch.cuda.set_rng_state(ts["cuda_rng"], device)
            # A larger patience given on resumption may allow a stopped run to continue.
            state["stopped_early"] = (config.train.patience > 0
                                      and state["bad_validations"] >= config.train.patience)
            del saved  # the weights now live in the model and optimisers (large tables: do not hold two copies)
        elif ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for stale in (best_path, last_path, out / HISTORY_FILE):
                stale.unlink(missing_ok=True)
        if ctx.is_main:
            _write_config(out / CONFIG_FILE, config, {"dataset": dataset.path.resolve(),
                                                      "compressed": compressed, "split": split.to_dict()})

        # Every parameter of every model gets a gradient in every step (the GSU's hard top-k selects rows of
        # the tables, not parameters; checked for each model in tests/train/test_distributed.py), so DDP
        # needs no search for unused parameters. The buffers (item feature rows, hash planes) never change:
        # no broadcast per step.
        forward: nn.Module = model
        if ctx.enabled:
            with collective_errors(ctx, "starting DistributedDataParallel (parameter broadcast)"):
                forward = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None, **_NO_BUFFER_SYNC,
                    gradient_as_bucket_view=True, find_unused_parameters=False)

        def snapshot() -> dict[str, Any]:
            ts = {k: v for k, v in state.items()}
            ts["optimizer_dense"] = opt_dense.state_dict()
            if opt_emb is not None:
                ts["optimizer_embedding"] = opt_emb.state_dict()
            if scaler is not None:
                ts["grad_scaler"] = scaler.state_dict()
            ts["torch_rng"] = torch.get_rng_state()
            if device.type == "cuda":
                ts["cuda_rng"] = torch.cuda.get_rng_state(device)
            return ts

        def save(path: Path) -> None:
            if ctx.is_main:
                save_checkpoint(path, model, config=config, sequence_config=seq, split=split, dataset=dataset,
                                compressed_path=compressed, train_state=snapshot())

        def validate() -> bool:
            """Validate, update best/last checkpoints; True when early stopping says stop (the same on
            every rank: the metrics are computed from the same gathered predictions)."""
            report = evaluate_sharded(model, builder, valid_samples, valid_start, ctx=ctx,
                                      batch_size=config.train.eval_batch_size, device=device, by_group=False)
            model.train()
            entry = {"epoch": state["epoch"], "step": state["step"], "train_loss": state["running_loss"],
                     "auc": report["auc"], "gauc": report["gauc"], "logloss": report["logloss"],
                     "gauc_users": report["gauc_users"], "seconds": report["seconds"]}
            if ctx.is_main and has_learned_gsu(model):
                # How target-aware the GSU is so far (on 2,000 validation samples; a few seconds).
                diag = retrieval_diagnostics(model, builder, valid_samples, max_samples=2000, device=device,
                                             batch_size=config.train.eval_batch_size)
                entry.update({f"gsu_{k}": diag[k] for k in ("category_recall", "category_hit_rate",
                                                             "relevance_abs", "cross_bias_abs")})
                model.train()
            state["history"].append(entry)
            gauc = report["gauc"]
            improved = not math.isnan(gauc) and gauc > state["best_gauc"]
            first = state["best_step"] < 0  # no best checkpoint yet
            if improved or first:
                state["best_gauc"] = gauc if not math.isnan(gauc) else state["best_gauc"]
                state["best_step"] = state["step"]
                state["best"] = dict(entry)
                state["bad_validations"] = 0
            else:
                state["bad_validations"] += 1
            patience = config.train.patience
            stop = patience > 0 and state["bad_validations"] >= patience
            state["stopped_early"] = stop
            if improved or first:
                save(best_path)
            save(last_path)
            if ctx.is_main:
                write_json_atomic(out / HISTORY_FILE, {"model": model_name, "validations": state["history"],
                                                       "loss_curve": state["loss_curve"]})
            console.print(f"  validation step {state['step']}: GAUC {gauc:.4f}  AUC {report['auc']:.4f}  "
                          f"logloss {report['logloss']:.4f}" + ("  (best)" if improved else ""),
                          highlight=False)
            return stop

        n = len(train_samples)
        bs = config.train.batch_size
        batches_per_epoch = -(-n // bs)
        total_steps = batches_per_epoch * config.train.epochs
        if max_steps is not None:
            total_steps = min(total_steps, max_steps)
        curve_every = max(1, total_steps // _LOSS_POINTS)
        workers = config.train.loader_workers
        if workers is None:
            workers = auto_loader_workers(threads, ctx.local_world_size, device)
        interrupted = False
        model.train()
        ranks = f", {ctx.world_size} ranks ({ctx.backend})" if ctx.enabled else ""
        console.print(f"training {model_name}: {n} samples, {batches_per_epoch} batches of {bs} per epoch, "
                      f"{config.train.epochs} epoch(s), L={seq.long_len}, k={config.model.esu_size}, "
                      f"device {device}, {threads} thread(s), {workers} batch worker(s){ranks}; "
                      f"{len(valid_samples)} validation samples", highlight=False)
        with _StopFlag() as stop_flag, make_progress(console, show=show_progress) as progress:
            task = progress.add_task(f"train {model_name}", total=total_steps, completed=state["step"], info="")
            while state["epoch"] < config.train.epochs and not state["stopped_early"]:
                if max_steps is not None and state["step"] >= max_steps:
                    break
                order = _epoch_order(n, seed, state["epoch"])
                epoch = EpochBatches(builder, train_samples, order, bs, rank=ctx.rank, world_size=ctx.world_size)
                stream = epoch_batches(epoch, state["batch_in_epoch"], workers=workers,
                                       pin_memory=device.type == "cuda")
                budget_hit = False
                stop = False
                t0 = time.perf_counter()
                with contextlib.closing(stream):
                    while state["batch_in_epoch"] < batches_per_epoch:
                        if max_steps is not None and state["step"] >= max_steps:
                            budget_hit = True
                            break
                        item = next(stream)
                        with collective_errors(ctx, f"training step {state['step']} (gradient all-reduce)"):
                            value, stop = _step(forward, item, ctx, device, amp_dtype, scaler, opt_dense, opt_emb,
                                                dense_params, config.optim.grad_clip, lambda: stop_flag.set)
                        if not math.isfinite(value):
                            raise ConfigError(f"training diverged at step {state['step']} (loss {value}); lower "
                                              "optim.dense_lr / optim.embedding_lr or set optim.grad_clip")
                        run = state["running_loss"]
                        state["running_loss"] = value if run is None else 0.98 * run + 0.02 * value
                        state["step"] += 1
                        state["batch_in_epoch"] += 1
                        state["samples_seen"] += item.global_size
                        if state["step"] % curve_every == 0:
                            state["loss_curve"].append([state["step"], state["running_loss"]])
                        progress.update(task, advance=1, info=f"loss {state['running_loss']:.4f} "
                                        f"epoch {state['epoch'] + 1}/{config.train.epochs}")
                        if stop:
                            break
                        # Mid-epoch validation; not at the step budget's last step, which is validated below.
                        if (config.train.eval_every and state["step"] % config.train.eval_every == 0
                                and state["batch_in_epoch"] < batches_per_epoch
                                and (max_steps is None or state["step"] < max_steps)):
                            state["train_seconds"] += time.perf_counter() - t0
                            early = validate()
                            t0 = time.perf_counter()
                            if early:
                                break
                state["train_seconds"] += time.perf_counter() - t0
                if stop:
                    interrupted = True
                    save(last_path)
                    console.print(f"interrupted at step {state['step']}: saved {last_path}; rerun with "
                                  "--resume to continue")
                    break
                if state["stopped_early"]:
                    break
                if budget_hit or state["batch_in_epoch"] < batches_per_epoch:
                    validate()
                    break
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
                if validate():
                    break
        if ctx.enabled:
            # Every rank returns once rank 0 has written the run folder.
            with collective_errors(ctx, "the final barrier"):
                torch.distributed.barrier()

    if interrupted:
        raise KeyboardInterrupt
    secs = state["train_seconds"]
    return TrainResult(
        out_dir=out, best_checkpoint=best_path, last_checkpoint=last_path, history=list(state["history"]),
        best=dict(state["best"]), loss_curve=[list(p) for p in state["loss_curve"]], steps=state["step"],
        epochs_completed=state["epoch"], stopped_early=bool(state["stopped_early"]), interrupted=interrupted,
        num_train_samples=n, num_valid_samples=len(valid_samples), train_seconds=secs,
        samples_per_second=state["samples_seen"] / secs if secs > 0 else float("nan"),
        extra={"world_size": ctx.world_size, "loader_workers": workers},
    )


def _step(forward: nn.Module, item: LocalBatch, ctx: DistContext, device: torch.device,
          amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None, opt_dense: torch.optim.Optimizer,
          opt_emb: torch.optim.Optimizer | None, dense_params: list[nn.Parameter], grad_clip: float | None,
          stop_requested: Callable[[], bool]) -> tuple[float, bool]:
    """One optimisation step on this rank's part of a global batch.

    Returns (the global batch's mean loss, whether any rank asked to stop). One process: the mean
    binary cross-entropy of the batch, as always. Several ranks: each rank's summed loss is scaled by
    ``world_size / global batch size``, so DDP's average of the gradients is the gradient of the global
    batch's mean loss however the batch was split (a stand-in row weighs 0); the loss for the log and the
    stop requests are summed over ranks in one collective.
    """
    batch = item.batch.to(device)
    opt_dense.zero_grad(set_to_none=True)
    if opt_emb is not None:
        opt_emb.zero_grad(set_to_none=True)
    autocast = contextlib.nullcontext() if amp_dtype is None else torch.autocast(device.type, dtype=amp_dtype)
    with autocast:
        logits = forward(batch).float()  # [b]
    if ctx.enabled:
        summed = F.binary_cross_entropy_with_logits(logits, batch.label, reduction="sum")
        loss = summed * (0.0 if item.stand_in else ctx.world_size / item.global_size)
    else:
        loss = F.binary_cross_entropy_with_logits(logits, batch.label)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt_dense)
    else:
        loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(dense_params, grad_clip)
    for opt in (opt_dense, opt_emb):
        if opt is None:
            continue
        if scaler is not None:
            scaler.step(opt)
        else:
            opt.step()
    if scaler is not None:
        scaler.update()
    if not ctx.enabled:
        return float(loss.detach()), stop_requested()
    local_sum = 0.0 if item.stand_in else float(summed.detach())
    total, stops = all_sum([local_sum, float(stop_requested())], ctx)
    return total / item.global_size, stops > 0


def config_for_resume(out: str | os.PathLike) -> TrainConfig:
    """The config saved in ``out/last.pt`` (what ``twinv2 train --resume`` starts from)."""
    payload = read_checkpoint(Path(out) / LAST_FILE)
    return config_from_dict(payload["train_config"], source=f"{Path(out) / LAST_FILE} (train_config)")


def run_training(out: str | os.PathLike, *, dataset: str | os.PathLike | None = None, model: str | None = None,
                 compressed: CompressedPaths | None = None, config_file: str | os.PathLike | None = None,
                 overrides: list[str] | None = None, options: dict[str, Any] | None = None,
                 resume: bool = False, overwrite: bool = False, show_progress: bool = True,
                 console: Console | None = None) -> TrainResult:
    """What ``twinv2 train`` does: resolve the config, then :func:`train_model`.

    The config is built in this order, later steps winning: the saved config of ``out/last.pt`` (with
    ``resume``) or the defaults; ``config_file``; ``model`` (sets ``model.long_term``); ``options``
    (``{"section.key": value}`` from explicit command-line options, ``None`` values skipped);
    ``overrides`` (``section.key=value`` strings from ``--set``). With ``resume``, ``dataset`` and
    ``compressed`` default to the paths stored in the checkpoint.
    """
    from twinv2.train.config import apply_overrides, load_config

    base = None
    if resume:
        last = Path(out) / LAST_FILE
        if not last.is_file():
            raise CheckpointError(f"{last}: nothing to resume (no last checkpoint in {out})")
        payload = read_checkpoint(last)
        base = config_from_dict(payload["train_config"], source=f"{last} (train_config)")
        dataset = dataset if dataset is not None else payload["dataset_path"]
        compressed = compressed if compressed is not None else payload.get("compressed_path")
    config = load_config(config_file, base=base)
    explicit = {k: v for k, v in (options or {}).items() if v is not None}
    if model is not None:
        explicit["model.long_term"] = model
    if explicit:
        config = apply_overrides(config, explicit, source="command-line options")
    if overrides:
        config = apply_overrides(config, overrides)
    if dataset is None:
        raise ConfigError("--dataset DIR is required (unless --resume continues a run that names it)")
    if model is None and not resume and config_file is None and not any(
            o.startswith("model.long_term=") for o in overrides or []):
        raise ConfigError(f"--model NAME is required; one of {', '.join(_model_names())}")
    return train_model(dataset, out, config, compressed=compressed, resume=resume, overwrite=overwrite,
                       show_progress=show_progress, console=console)


def _model_names() -> tuple[str, ...]:
    from twinv2.models.config import LONG_TERM_NAMES

    return LONG_TERM_NAMES
