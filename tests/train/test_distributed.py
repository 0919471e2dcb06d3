"""Multi-process training (gloo on the CPU): N ranks follow the one-process trajectory at the same global
batch, metrics are computed on the union of the ranks' predictions, a run resumes on another number of
ranks, and a rank that dies or hangs ends the job with a clear error.

Ranks are spawned processes that join a process group through the environment variables ``torchrun`` sets
(``test_train_cli_nproc_runs_torchrun`` goes through torchrun itself).

Tolerance: the ranks sum the gradients of their parts of a batch in another order than one process does, so
the runs agree to float rounding: parameters within ``PARAM_ATOL`` = 1e-5 (measured: below 1e-6 on parameters
of magnitude ~1 after two epochs), losses within a relative 1e-6. The runs use Adagrad's
``embedding_initial_accumulator: 0.1``: with the default 0, the first update of a coordinate is about
``lr * sign(gradient)`` however small the gradient, so a gradient at rounding level (zero in one summation
order, 1e-12 in another) moves a coordinate by up to lr = 0.5 and the comparison would measure that
amplifier instead of the sharding (measured: 0.07 on an embedding coordinate after 10 steps, loss 1e-3).
"""

from __future__ import annotations

import io
import itertools
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from tests.train.conftest import tiny_config
from twinv2.data.batches import BatchBuilder, SequenceConfig
from twinv2.data.split import make_samples
from twinv2.data.store import load_dataset
from twinv2.errors import DistributedError
from twinv2.models import build_model
from twinv2.models.config import LONG_TERM_NAMES
from twinv2.train.checkpoint import load_checkpoint
from twinv2.train.distributed import (
    DistContext,
    check_same_inputs,
    evaluate_sharded,
    local_part,
    setup_distributed,
    shard_bounds,
    teardown_distributed,
)
from twinv2.train.evaluate import evaluate_samples
from twinv2.train.inputs import make_split
from twinv2.train.loop import train_model

PARAM_ATOL = 1e-5
STABLE_ADAGRAD = {"optim__embedding_initial_accumulator": 0.1}
# 597 training samples in the tiny split: batches of 149 leave one sample for the last batch, so with two
# ranks one of them gets a stand-in row of weight 0 there.
ODD_BATCH = 149


# -- helpers ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, target: Callable[..., Any], args: tuple, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    # One thread per rank: two ranks share the machine's cores.
    torch.set_num_threads(1)
    try:
        queue.put((rank, True, target(rank, *args)))
    except BaseException as exc:  # report every failure to the parent, which asserts on it
        queue.put((rank, False, (type(exc).__name__, str(exc))))


def run_ranks(world: int, target: Callable[..., Any], *args: Any, timeout: float = 120) -> list[tuple[bool, Any]]:
    """Run ``target(rank, *args)`` in ``world`` spawned ranks (a module-level function); (ok, result or (error
    type, message)) per rank. Spawned, not forked: a rank forked from a pytest process whose earlier tests
    started torch's OpenMP pool could deadlock in it (seen once in a full-suite run: a rank that never
    reported)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, target, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, tuple[bool, Any]] = {}
    try:
        for _ in procs:
            rank, ok, value = queue.get(timeout=timeout)
            results[rank] = (ok, value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return [results[r] for r in range(world)]


def _quiet() -> Console:
    return Console(file=io.StringIO())


def _train(rank: int, dataset_dir: Path, out: Path, overrides: dict[str, Any], resume: bool = False) -> dict:
    result = train_model(dataset_dir, out, tiny_config(**overrides), resume=resume, show_progress=False,
                         console=_quiet())
    return {"steps": result.steps, "loss_curve": result.loss_curve, "history": result.history}


def _assert_same_parameters(a: Path, b: Path, atol: float = PARAM_ATOL) -> None:
    sa = torch.load(a, weights_only=True)["model_state"]
    sb = torch.load(b, weights_only=True)["model_state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=atol, msg=key)


# -- sharding -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 5, 64, 149])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_bounds_cover_every_row_once(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(bounds))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_local_part_gives_an_empty_rank_a_weightless_stand_in():
    index = np.array([7])
    assert local_part(index, 0, 2)[0].tolist() == [7] and not local_part(index, 0, 2)[1]
    part, stand_in = local_part(index, 1, 2)
    assert stand_in and part.tolist() == [7]


# -- DDP needs no unused-parameter search -------------------------------------------------------------------
@pytest.mark.parametrize("name", LONG_TERM_NAMES)
def test_every_parameter_gets_a_gradient_in_every_step(name, tiny_dataset_dir):
    """Why ``find_unused_parameters=False`` is right: the GSU's hard top-k picks table rows, never whole
    parameters, so every parameter of every model takes part in every backward pass."""
    dataset = load_dataset(tiny_dataset_dir)
    cfg = tiny_config(model__long_term=name, model__esu_null_slot=True)
    model = build_model(cfg.model, dataset.manifest, dataset.items)
    samples = make_samples(dataset, make_split(dataset, cfg), "train")
    # Raw sequences for every model (a twinv2 model scores a raw behavior as a cluster of size 1).
    builder = BatchBuilder(dataset, SequenceConfig(long_len=30, short_len=10))
    for rows in (np.arange(16), np.arange(1)):
        model.zero_grad(set_to_none=True)
        batch = builder.build(samples, rows)
        F.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == []


# -- trajectories -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_two_ranks_follow_the_one_process_trajectory(tiny_dataset_dir, tmp_path, sparse):
    overrides = {"model__long_term": "twin", "train__batch_size": ODD_BATCH, "train__epochs": 2,
                 "train__patience": 0, "optim__sparse_embeddings": sparse, **STABLE_ADAGRAD}
    one = _train(0, tiny_dataset_dir, tmp_path / "one", overrides)
    results = run_ranks(2, _train, tiny_dataset_dir, tmp_path / "two", overrides)
    assert all(ok for ok, _ in results), results
    for _, two in results:
        assert two["steps"] == one["steps"] == 2 * 5
        np.testing.assert_allclose([v for _, v in two["loss_curve"]], [v for _, v in one["loss_curve"]], rtol=1e-6)
        # Validation on the union of the ranks' predictions: the one-process metrics (same model up to rounding).
        for got, expected in zip(two["history"], one["history"], strict=True):
            assert got["gauc"] == pytest.approx(expected["gauc"], abs=1e-6)
            assert got["gauc_users"] == expected["gauc_users"]
    _assert_same_parameters(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt")
    # Rank 0 alone wrote the run folder, and nothing was left half-written.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best.pt", "config.yaml", "history.json",
                                                                      "last.pt"]


def _evaluate(rank: int, checkpoint: Path, dataset_dir: Path) -> dict:
    ctx, device = setup_distributed(torch.device("cpu"), timeout=60)
    try:
        model, info = load_checkpoint(checkpoint)
        dataset = load_dataset(dataset_dir)
        samples = make_samples(dataset, info.split, "test")
        builder = BatchBuilder(dataset, info.sequence_config)
        return evaluate_sharded(model, builder, samples, info.split.window("test")[0], batch_size=37,
                                device=device, ctx=ctx, by_group=True)
    finally:
        teardown_distributed(ctx)


def test_sharded_evaluation_equals_the_one_process_metrics(tiny_dataset_dir, tmp_path):
    train_model(tiny_dataset_dir, tmp_path / "run", tiny_config(model__long_term="twin"), show_progress=False,
                console=_quiet())
    checkpoint = tmp_path / "run" / "best.pt"
    model, info = load_checkpoint(checkpoint)
    dataset = load_dataset(tiny_dataset_dir)
    samples = make_samples(dataset, info.split, "test")
    expected = evaluate_samples(model, BatchBuilder(dataset, info.sequence_config), samples,
                                info.split.window("test")[0], batch_size=64, device=torch.device("cpu"))
    # The same model predicts each sample in another batch (3 uneven parts, batches of 37 vs 64), which can
    # change a prediction in float32's last bits: the metrics agree to 1e-9, not bit for bit.
    for ok, report in run_ranks(3, _evaluate, checkpoint, tiny_dataset_dir):
        assert ok, report
        for key in ("auc", "gauc", "logloss"):
            assert report[key] == pytest.approx(expected[key], abs=1e-9), key
        assert report["gauc_users"] == expected["gauc_users"] and report["num_samples"] == expected["num_samples"]
        for group in expected["groups"]:
            assert report["groups"][group]["gauc"] == pytest.approx(expected["groups"][group]["gauc"], abs=1e-9,
                                                                    nan_ok=True)


def test_a_run_stopped_on_one_process_resumes_on_two_ranks(tiny_dataset_dir, tmp_path):
    base = {"model__long_term": "twin", "train__epochs": 2, "train__patience": 0, **STABLE_ADAGRAD}
    full = _train(0, tiny_dataset_dir, tmp_path / "full", base)
    cut = _train(0, tiny_dataset_dir, tmp_path / "cut", {**base, "train__max_steps": 3})
    assert cut["steps"] == 3
    results = run_ranks(2, _train, tiny_dataset_dir, tmp_path / "cut", base, True)
    assert all(ok for ok, _ in results), results
    assert [r["steps"] for _, r in results] == [full["steps"]] * 2
    _assert_same_parameters(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")


# -- failures -----------------------------------------------------------------------------------------------
def _train_or_fail(rank: int, dataset_dir: Path, out: Path, how: str) -> Any:
    """Rank 0 trains; rank 1 joins the process group, then dies or hangs, or dies at its third training step."""
    cfg = tiny_config(model__long_term="twin", train__dist_timeout=3.0)
    if rank == 0:
        t0 = time.perf_counter()
        try:
            train_model(dataset_dir, out, cfg, show_progress=False, console=_quiet())
        except DistributedError as exc:
            return str(exc), time.perf_counter() - t0
        return "no error", time.perf_counter() - t0
    if how == "dies mid-run":
        import twinv2.train.loop as loop

        real, calls = loop._step, []

        def dying_step(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                os._exit(1)
            return real(*args, **kwargs)

        loop._step = dying_step  # this rank's own copy of the module only
        train_model(dataset_dir, out / "rank1", cfg, show_progress=False, console=_quiet())
    ctx, _ = setup_distributed(torch.device("cpu"), timeout=3.0)
    assert isinstance(ctx, DistContext) and ctx.enabled
    if how == "dies":
        os._exit(1)
    time.sleep(30)  # hangs (the parent kills it)
    return None


@pytest.mark.parametrize("how", ["dies", "hangs", "dies mid-run"])
def test_a_rank_that_dies_or_hangs_ends_the_job_with_a_clear_error(tiny_dataset_dir, tmp_path, how):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, _train_or_fail, (tiny_dataset_dir, tmp_path, how),
                                                  queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        rank, ok, value = queue.get(timeout=60)
    finally:
        for p in procs:
            p.kill()
            p.join()
    assert rank == 0 and ok, value
    message, seconds = value
    assert message.startswith("rank 0 of 2: ") and "train.dist_timeout=3 s" in message, message
    if how == "dies mid-run":
        assert "training step 2 (gradient all-reduce) failed" in message, message
    assert seconds < 3.0 + 10.0


def test_a_rank_started_without_torchrun_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(DistributedError, match=r"rank 1 of 2: could not join the gloo process group .*torchrun"):
        setup_distributed(torch.device("cpu"), timeout=3)


def _compare_inputs(rank: int, same: bool) -> str:
    ctx, _ = setup_distributed(torch.device("cpu"), timeout=30)
    try:
        check_same_inputs("dataset A" if same or rank == 0 else "dataset B", ctx)
        return "same"
    except DistributedError as exc:
        return str(exc)
    finally:
        teardown_distributed(ctx)


def test_ranks_that_read_different_inputs_stop_before_training():
    assert [r for _, r in run_ranks(2, _compare_inputs, True)] == ["same", "same"]
    messages = [r for _, r in run_ranks(2, _compare_inputs, False)]
    assert all("the ranks read different inputs" in m for m in messages), messages
    assert "this rank: dataset B" in messages[1]


# -- the command line ---------------------------------------------------------------------------------------
def test_train_cli_nproc_runs_torchrun(tiny_dataset_dir, tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "twinv2", "train", "--nproc", "2", "--dataset", str(tiny_dataset_dir),
               "--model", "twin", "--out", str(out), "--epochs", "1", "--long-len", "30", "--esu-size", "8",
               "--device", "cpu", "--set", "model.id_dim=8", "--set", "train.num_threads=1", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    summary = json.loads(done.stdout)  # one JSON object: rank 0 alone reports
    assert summary["steps"] >= 1 and (out / "last.pt").is_file()
    assert "2 ranks (gloo)" in done.stderr


def test_train_cli_nproc_inside_torchrun_is_a_clear_error(tiny_dataset_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from twinv2.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    res = CliRunner().invoke(app, ["train", "--nproc", "2", "--dataset", str(tiny_dataset_dir), "--model", "twin",
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "already one rank of a torchrun job" in res.output


def test_train_args_pass_every_option_on():
    from twinv2.cli import _train_args

    args = _train_args(dataset=Path("d"), model="twin", out=Path("o"), compressed=[Path("c1"), Path("c2")],
                       config=None, set_=["a.b=1"], epochs=2, batch_size=None, long_len=30, esu_size=None,
                       max_train_samples=None, seed=0, device="cpu", resume=True, overwrite=False, as_json=True)
    assert args == ["--dataset", "d", "--model", "twin", "--out", "o", "--epochs", "2", "--long-len", "30",
                    "--seed", "0", "--device", "cpu", "--compressed", "c1", "--compressed", "c2", "--set", "a.b=1",
                    "--resume", "--json"]
