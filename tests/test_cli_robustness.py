"""CLI robustness (issue 9): every ``twinv2`` command, taken from the typer app itself, fed bad input.

Each case runs one command in-process with otherwise valid arguments and ONE bad input, and must exit
non-zero with exactly one line on stderr that names the option, field or file at fault: never a traceback,
never a silent success, never output on stdout, never a partial output folder or file.

Cases come from the commands' own parameters, so a new command or option is covered without editing this
file:

- every int/float option gets ``abc``, ``0`` and ``-1`` (``0``/``-1`` only where they are below the option's
  declared ``min``; an option without a ``min`` must be listed in ``ANY_NUMBER`` or it gets both and must
  reject them);
- every path parameter gets the cases of its role (``ROLE_OF``, by parameter name): missing, empty and
  read-only folders, a truncated ``events.parquet``, a corrupt or non-UTF-8 ``manifest.json``, a corrupt
  ``user_offsets.npy``, a checkpoint from another dataset, a compressed folder from another snapshot or
  dataset, ... A path parameter of unknown role gets the generic input cases;
- a command without a baseline in ``baseline_args`` fails ``test_every_command_has_a_baseline``.

Read-only folders: the suite runs as root in CI, where permission bits do not stop writes; there the
folders are also guarded by a patch that raises ``PermissionError`` for any write below them.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from tests.conftest import make_tiny_dataset
from tests.data.test_importers import KR_HEADER, ML_MOVIES, ML_RATINGS, TAOBAO
from tests.train.conftest import tiny_config
from twinv2.cli import app

# ---- the commands ------------------------------------------------------------------------------------


def iter_commands() -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every runnable command of the app: ``(path, command)``; a group that runs without a subcommand
    (``twinv2 compress --dataset ...``) counts as a command too."""
    def walk(cmd: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        if isinstance(cmd, TyperGroup):
            if cmd.invoke_without_command and path:
                yield path, cmd
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, (*path, name))
        else:
            yield path, cmd

    yield from walk(typer.main.get_command(app), ())


COMMANDS = dict(iter_commands())

# Parameter name -> role: which bad inputs apply (see ROLE_CASES).
ROLE_OF = {
    "dataset": "dataset", "out": "out", "compressed": "compressed", "base": "compressed",
    "folder": "compressed", "checkpoint": "checkpoint", "config": "yaml", "mapping": "yaml",
    "embedding_ids": "npy", "embeddings": "embeddings", "src": "raw", "video_features": "raw", "plot": "plot",
}
# Commands whose --out is one file (the others write a folder).
FILE_OUTPUT = {("export-embeddings",), ("compress", "embeddings")}
# Commands that only read their input: they must succeed on a read-only one, writing nothing into it.
READ_ONLY_INPUT = {("data", "describe"): "dataset", ("compress", "stats"): "folder"}
# Numeric options for which every number (0 and negatives included) is meaningful: times and thresholds.
ANY_NUMBER = {"--snapshot-ts", "--before-ts", "--label-threshold", "--headroom-start", "--headroom-end"}
# String options with a closed set of values (--split-by: the dataset's inherent categoricals, or 'none').
CHOICES = {"--split", "--device", "--method", "--backend", "--group-bins", "--missing-embedding", "--scale",
           "--ts-unit", "--model", "--models", "--positive", "--oov", "--split-by"}


# ---- the world: valid inputs and their broken variants, built once -------------------------------------


@dataclass
class World:
    root: Path
    ds: Path
    other_ds: Path
    split: Any
    comp: Path            # compressed at the train snapshot
    comp_late: Path       # compressed after the test start (another snapshot)
    comp_other: Path      # compressed from another dataset
    ckpt: Path            # twinv2 trained on ds with comp
    ckpt_other: Path      # avg_pool trained on other_ds
    emb_npy: Path         # embeddings of ds (+ .ids.npy)
    sources: dict[str, Path] = field(default_factory=dict)
    broken: dict[str, Path] = field(default_factory=dict)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    import io as _io

    import torch
    from rich.console import Console

    from twinv2.compress import compress_dataset
    from twinv2.data.store import load_dataset
    from twinv2.train.evaluate import export_embeddings
    from twinv2.train.loop import make_split, train_model

    root = tmp_path_factory.mktemp("robust")
    ds = make_tiny_dataset(root / "ds")
    other = make_tiny_dataset(root / "other", seed=1)
    dataset = load_dataset(ds)
    cfg = tiny_config(model__long_term="twinv2", train__max_steps=2)
    split = make_split(dataset, cfg)
    comp, comp_late, comp_other = root / "comp", root / "comp_late", root / "comp_other"
    compress_dataset(ds, comp, split.snapshot_ts, workers=1, progress=False)
    compress_dataset(ds, comp_late, split.test_start_ts + 500, workers=1, progress=False)
    compress_dataset(other, comp_other, split.snapshot_ts, workers=1, progress=False)
    quiet = Console(file=_io.StringIO())
    ckpt = train_model(dataset, root / "run", cfg, compressed=comp, show_progress=False,
                       console=quiet).best_checkpoint
    ckpt_other = train_model(load_dataset(other), root / "run_other",
                             tiny_config(model__long_term="avg_pool", train__max_steps=1), show_progress=False,
                             console=quiet).best_checkpoint
    emb = export_embeddings(ckpt, root / "emb.npy")
    w = World(root, ds, other, split, comp, comp_late, comp_other, ckpt, ckpt_other, emb)

    # Raw sources of the importers.
    (root / "ml").mkdir()
    (root / "ml" / "ratings.csv").write_text(ML_RATINGS)
    (root / "ml" / "movies.csv").write_text(ML_MOVIES)
    (root / "tb").mkdir()
    (root / "tb" / "UserBehavior.csv").write_text(TAOBAO)
    (root / "kr").mkdir()
    (root / "kr" / "log_standard_4_08_to_4_21_1k.csv").write_text(
        KR_HEADER + "0,5,20220408,1000,1649400000500,1,0,0,0,0,0,0,500,1000,0,0,0,0,1\n")
    (root / "events.csv").write_text("user,item,ts,label\na,x,10,1\nb,y,20,0\na,y,30,0\n")
    w.sources = {"ml": root / "ml", "tb": root / "tb", "kr": root / "kr", "csv": root / "events.csv"}

    # Broken variants, each a copy with one thing wrong.
    b = w.broken
    b["empty folder"] = root / "empty"
    b["empty folder"].mkdir()
    b["a file"] = root / "plain.txt"
    b["a file"].write_text("not a folder\n")
    b["read-only folder"] = root / "readonly"
    b["read-only folder"].mkdir()
    b["ds truncated events.parquet"] = _copy(ds, root / "ds_trunc_events")
    _truncate(b["ds truncated events.parquet"] / "events.parquet")
    b["ds corrupt manifest.json"] = _copy(ds, root / "ds_bad_manifest")
    (b["ds corrupt manifest.json"] / "manifest.json").write_text('{"name": "tiny", ')
    b["ds non-UTF-8 manifest.json"] = _copy(ds, root / "ds_latin1_manifest")
    (b["ds non-UTF-8 manifest.json"] / "manifest.json").write_bytes(b'{"name": "caf\xe9"}')
    b["ds manifest.json not an object"] = _copy(ds, root / "ds_list_manifest")
    (b["ds manifest.json not an object"] / "manifest.json").write_text("[1, 2, 3]\n")
    b["ds corrupt user_offsets.npy"] = _copy(ds, root / "ds_bad_offsets")
    (b["ds corrupt user_offsets.npy"] / "user_offsets.npy").write_bytes(b"\x93NUMPY garbage" * 3)
    b["ds truncated user_offsets.npy"] = _copy(ds, root / "ds_trunc_offsets")
    _truncate(b["ds truncated user_offsets.npy"] / "user_offsets.npy", 0.8)
    b["comp corrupt manifest.json"] = _copy(comp, root / "comp_bad_manifest")
    (b["comp corrupt manifest.json"] / "manifest.json").write_text("{")
    b["comp non-UTF-8 manifest.json"] = _copy(comp, root / "comp_latin1_manifest")
    (b["comp non-UTF-8 manifest.json"] / "manifest.json").write_bytes(b"\xff\xfe{}")
    b["comp corrupt user_offsets.npy"] = _copy(comp, root / "comp_bad_offsets")
    (b["comp corrupt user_offsets.npy"] / "user_offsets.npy").write_bytes(b"garbage")
    b["comp truncated part"] = _copy(comp, root / "comp_trunc_part")
    _truncate(sorted((b["comp truncated part"]).glob("part-*.parquet"))[0])
    b["ckpt empty file"] = root / "empty.pt"
    b["ckpt empty file"].write_bytes(b"")
    b["ckpt garbage"] = root / "garbage.pt"
    b["ckpt garbage"].write_bytes(os.urandom(256))
    b["ckpt truncated"] = root / "truncated.pt"
    b["ckpt truncated"].write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    b["ckpt not a twinv2 checkpoint"] = root / "other.pt"
    torch.save({"weights": torch.zeros(2)}, b["ckpt not a twinv2 checkpoint"])
    b["yaml corrupt"] = root / "bad.yaml"
    b["yaml corrupt"].write_text("train: {epochs: [1, 2\n")
    b["yaml non-UTF-8"] = root / "latin1.yaml"
    b["yaml non-UTF-8"].write_bytes(b"train:\n  device: caf\xe9\n")
    b["yaml not a mapping"] = root / "list.yaml"
    b["yaml not a mapping"].write_text("- 1\n- 2\n")
    b["npy garbage"] = root / "garbage.npy"
    b["npy garbage"].write_bytes(b"not an npy file at all")
    b["npy truncated"] = root / "trunc.npy"
    b["npy truncated"].write_bytes(emb.read_bytes()[: emb.stat().st_size // 2])
    b["npy ids of another length"] = root / "short.ids.npy"
    np.save(b["npy ids of another length"], np.arange(1, 5, dtype=np.int64))
    return w


# ---- read-only folders, also for root -----------------------------------------------------------------


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only: permission bits, plus (as root, where bits do not bind) a patch that
    raises ``PermissionError`` for any write below it through os/builtins/pathlib."""
    folder = folder.resolve()
    mode = folder.stat().st_mode
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)

    def below(path: Any) -> bool:
        try:
            return Path(os.path.abspath(os.fspath(path))).is_relative_to(folder)
        except TypeError:
            return False

    def deny(path: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    monkeypatch = pytest.MonkeyPatch()
    if os.geteuid() == 0:
        real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
        real_replace, real_rename = os.replace, os.rename

        def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and below(file):
                deny(file)
            return real_open(file, mode, *args, **kwargs)

        def guarded_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> Any:
            if flags & _WRITE_FLAGS and below(path):
                deny(path)
            return real_os_open(path, flags, *args, **kwargs)

        def guarded_mkdir(path: Any, *args: Any, **kwargs: Any) -> Any:
            if below(path):
                deny(path)
            return real_mkdir(path, *args, **kwargs)

        def guarded_move(real: Callable[..., Any]) -> Callable[..., Any]:
            def move(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                if below(dst) or below(src):
                    deny(dst)
                return real(src, dst, *args, **kwargs)
            return move

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(io, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)
        monkeypatch.setattr(os, "mkdir", guarded_mkdir)
        monkeypatch.setattr(os, "replace", guarded_move(real_replace))
        monkeypatch.setattr(os, "rename", guarded_move(real_rename))
    try:
        yield
    finally:
        monkeypatch.undo()
        folder.chmod(mode)


def test_read_only_guard_blocks_writes(tmp_path):
    """The guard itself: without it the read-only cases could pass by writing (root ignores mode bits)."""
    with read_only(tmp_path):
        with pytest.raises(PermissionError):
            (tmp_path / "x").write_text("x")
        with pytest.raises(PermissionError):
            (tmp_path / "d").mkdir()
    (tmp_path / "x").write_text("x")  # writable again afterwards


# ---- baselines: valid arguments of every command --------------------------------------------------------

TINY_SETS = ["model.id_dim=8", "model.feature_dim=4", "model.num_heads=2", "model.head_dim=4", "model.esu_size=8",
             "model.short_len=10", "model.din_len=10", "model.mlp_dims=[16]", "data.long_len=30",
             "split.snapshot=0.5", "split.valid=0.7", "split.test=0.85", "train.batch_size=64",
             "train.max_steps=1", "train.device=cpu", "train.num_threads=1"]


def baseline_args(w: World, out: Path) -> dict[tuple[str, ...], dict[str, Any]]:
    """Valid arguments of each command by parameter name (``True`` = flag); ``out`` is a fresh path."""
    s = str(w.split.snapshot_ts)
    return {
        ("data", "synth"): {"out": out, "scale": "small", "users": "5", "max_events": "50"},
        ("data", "describe"): {"dataset": w.ds, "as_json": True},
        ("data", "import", "movielens"): {"src": w.sources["ml"], "out": out},
        ("data", "import", "taobao"): {"src": w.sources["tb"], "out": out},
        ("data", "import", "kuairand"): {"src": w.sources["kr"], "out": out},
        ("data", "import", "csv"): {"src": w.sources["csv"], "out": out, "user_col": "user", "item_col": "item",
                                    "ts_col": "ts", "label_col": "label"},
        ("compress",): {"dataset": w.ds, "out": out, "snapshot_ts": s, "workers": "1", "quiet": True},
        ("compress", "run"): {"dataset": w.ds, "out": out, "snapshot_ts": s, "workers": "1", "quiet": True},
        ("compress", "stats"): {"folder": w.comp, "as_json": True},
        ("compress", "embeddings"): {"dataset": w.ds, "out": out, "dim": "4"},
        ("train",): {"dataset": w.ds, "model": "twinv2", "compressed": w.comp, "out": out, "set_": TINY_SETS},
        ("evaluate",): {"checkpoint": w.ckpt, "as_json": True, "max_samples": "50"},
        ("export-embeddings",): {"checkpoint": w.ckpt, "out": out},
        ("demo",): {"out": out, "quick": True, "scale": "small", "models": "avg_pool"},
        ("serve",): {"checkpoint": w.ckpt, "compressed": w.comp, "store": f"sqlite://{out.parent / 'serve.db'}",
                     "port": "8765"},
    }


# Arguments a role's cases need besides the bad value (e.g. --base is only read with --incremental).
ROLE_CONTEXT: dict[tuple[tuple[str, ...], str], Callable[[World], dict[str, Any]]] = {
    (("compress",), "base"): lambda w: {"incremental": True, "snapshot_ts": str(w.split.valid_start_ts)},
    (("compress", "run"), "base"): lambda w: {"incremental": True, "snapshot_ts": str(w.split.valid_start_ts)},
    (("compress",), "embedding_ids"): lambda w: {"embeddings": str(w.emb_npy)},
    (("compress", "run"), "embedding_ids"): lambda w: {"embeddings": str(w.emb_npy)},
}


# ---- cases ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One command x bad input: override ``param`` with a value made by ``make``; ``expect`` holds
    strings of which the error line must contain one (option, field or file names)."""

    command: tuple[str, ...]
    param: str
    label: str
    make: Callable[[World, Path], tuple[Any, list[str], dict[str, Any]]]
    succeeds: bool = False  # a read-only input: the command must succeed without writing into it

    @property
    def id(self) -> str:
        return f"{' '.join(self.command)} {self.param}: {self.label}"


def _value(v: str) -> Callable[[World, Path], tuple[Any, list[str], dict[str, Any]]]:
    return lambda w, tmp: (v, [], {})


def _broken(key: str, names: tuple[str, ...] = ()) -> Callable[[World, Path], tuple[Any, list[str], dict]]:
    def make(w: World, tmp: Path) -> tuple[Any, list[str], dict[str, Any]]:
        path = w.broken[key]
        return path, [str(path), *names], {}
    return make


def _missing(suffix: str = "") -> Callable[[World, Path], tuple[Any, list[str], dict[str, Any]]]:
    return lambda w, tmp: (tmp / f"no-such-thing{suffix}", [str(tmp / f"no-such-thing{suffix}")], {})


def _attr(name: str, *names: str, extra: Callable[[World], dict[str, Any]] | None = None):
    def make(w: World, tmp: Path) -> tuple[Any, list[str], dict[str, Any]]:
        path = getattr(w, name)
        return path, [str(path), *names], (extra(w) if extra else {})
    return make


def _out_in_read_only(file: bool) -> Callable[[World, Path], tuple[Any, list[str], dict[str, Any]]]:
    def make(w: World, tmp: Path) -> tuple[Any, list[str], dict[str, Any]]:
        folder = tmp / "ro"
        folder.mkdir()
        target = folder / ("out.npy" if file else "out")
        return target, [str(folder)], {"__read_only__": folder}
    return make


def _out_under_a_file(file: bool) -> Callable[[World, Path], tuple[Any, list[str], dict[str, Any]]]:
    def make(w: World, tmp: Path) -> tuple[Any, list[str], dict[str, Any]]:
        (tmp / "afile").write_text("x")
        target = tmp / "afile" / ("out.npy" if file else "out")
        return target, [str(tmp / "afile")], {}
    return make


def _out_existing(kind: str) -> Callable[[World, Path], tuple[Any, list[str], dict[str, Any]]]:
    def make(w: World, tmp: Path) -> tuple[Any, list[str], dict[str, Any]]:
        target = tmp / "existing.npy"
        if kind == "file":
            target.write_text("precious\n")
        else:
            target.mkdir()
            (target / "precious.txt").write_text("precious\n")
        return target, [str(target)], {"__untouched__": target}
    return make


def role_cases(command: tuple[str, ...], param: str, role: str) -> list[tuple[str, Callable, bool]]:
    """``(label, make, succeeds)`` for one path parameter of ``command``."""
    generic = [("missing", _missing(), False), ("empty folder", _broken("empty folder"), False),
               ("a file instead of a folder", _broken("a file"), False)]
    if role == "dataset":
        cases = generic + [
            (label, _broken(f"ds {label}", (file,)), False) for label, file in (
                ("truncated events.parquet", "events.parquet"), ("corrupt manifest.json", "manifest.json"),
                ("non-UTF-8 manifest.json", "manifest.json"), ("manifest.json not an object", "manifest.json"),
                ("corrupt user_offsets.npy", "user_offsets.npy"),
                ("truncated user_offsets.npy", "user_offsets.npy"))]
        if command == ("evaluate",):
            cases.append(("another dataset than the checkpoint's", _attr("other_ds", "checkpoint"), False))
        if command == ("train",):
            cases.append(("another dataset than the compressed folder's", _attr("other_ds", "another dataset"),
                          False))
    elif role == "compressed":
        cases = generic + [
            (label, _broken(f"comp {label}", (file,)), False) for label, file in (
                ("corrupt manifest.json", "manifest.json"), ("non-UTF-8 manifest.json", "manifest.json"),
                ("corrupt user_offsets.npy", "user_offsets.npy"), ("truncated part", "part-"))]
        if command in (("train",), ("evaluate",)) or param == "base":
            cases += [("another snapshot", _attr("comp_late", "snapshot"), False),
                      ("another dataset", _attr("comp_other", "another dataset", "dataset"), False)]
    elif role == "checkpoint":
        cases = [("missing", _missing(".pt"), False), ("a folder", _broken("empty folder"), False)] + [
            (label, _broken(f"ckpt {label}"), False)
            for label in ("empty file", "garbage", "truncated", "not a twinv2 checkpoint")]
    elif role == "yaml":
        cases = [("missing", _missing(".yaml"), False)] + [
            (label, _broken(f"yaml {label}"), False) for label in ("corrupt", "non-UTF-8", "not a mapping")]
    elif role == "npy":
        cases = [("missing", _missing(".npy"), False), ("garbage", _broken("npy garbage"), False),
                 ("ids of another length", _broken("npy ids of another length"), False)]
    elif role == "embeddings":
        cases = [("missing .npy", _missing(".npy"), False), ("missing checkpoint", _missing(".pt"), False),
                 ("unknown kind", _value("embeddings.txt"), False),
                 ("garbage .npy", _broken("npy garbage"), False), ("truncated .npy", _broken("npy truncated"), False),
                 ("checkpoint from another dataset", _attr("ckpt_other", "another dataset", "dataset"), False),
                 ("checkpoint trained past the snapshot", _attr("ckpt", "snapshot"), False)]
    elif role == "raw":
        cases = [("missing", _missing(".csv"), False), ("empty folder", _broken("empty folder"), False)]
    elif role == "out":
        file = command in FILE_OUTPUT
        cases = [("inside a read-only folder", _out_in_read_only(file), False),
                 ("below a file", _out_under_a_file(file), False)]
        cases.append(("an existing folder", _out_existing("folder"), False) if file else
                     ("an existing file", _out_existing("file"), False))
    elif role == "plot":
        cases = [("inside a read-only folder", _out_in_read_only(True), False),
                 ("below a file", _out_under_a_file(True), False)]
    else:  # a path parameter nobody described yet: treat it as an input
        cases = generic
    if READ_ONLY_INPUT.get(command) == param:
        cases.append(("read-only input (must succeed, writing nothing)", None, True))
    return cases


def _annotation(p: Any) -> Any:
    return p.type_descriptor.annotation


def generate_cases() -> list[Case]:
    cases: list[Case] = []
    for command, cmd in COMMANDS.items():
        for p in cmd.params:
            ann = _annotation(p)
            opt = p.opts[0] if p.opts else p.name
            if ann is bool:
                continue
            if ann in (int, float):
                for v in ("abc", "0", "-1"):
                    if v != "abc" and (opt in ANY_NUMBER or (p.min is not None and float(v) >= p.min)):
                        continue  # a valid value
                    cases.append(Case(command, p.name, f"{opt} {v}", _value(v)))
                continue
            if opt in CHOICES:
                cases.append(Case(command, p.name, f"{opt} bogus", _value("bogus")))
                continue
            role = ROLE_OF.get(p.name)
            if role is None and ann is not Path:
                continue
            for label, make, succeeds in role_cases(command, p.name, role or "input"):
                cases.append(Case(command, p.name, label, make, succeeds))
    # Values of list options and of config keys.
    for bad in ("model.nope=1", "train.batch_size=-1", "train.batch_size=abc", "no-equals-sign"):
        cases.append(Case(("train",), "set_", f"--set {bad}", lambda w, tmp, b=bad: ([b], [b.split("=")[0]], {})))
    return cases


CASES = generate_cases()


def test_every_command_has_a_baseline_and_is_covered(tmp_path):
    """A new command fails here until it has valid baseline arguments (and then gets its cases)."""
    w = World(tmp_path, tmp_path, tmp_path, None, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path)
    w.split = type("S", (), {"snapshot_ts": 0, "valid_start_ts": 1, "test_start_ts": 2})()
    w.sources = {k: tmp_path for k in ("ml", "tb", "kr", "csv")}
    missing = sorted(" ".join(c) for c in COMMANDS if c not in baseline_args(w, tmp_path / "out"))
    assert not missing, f"commands without baseline arguments in tests/test_cli_robustness.py: {missing}"
    covered = {c.command for c in CASES}
    assert covered == set(COMMANDS), f"commands without cases: {set(COMMANDS) - covered}"


# ---- running one case -------------------------------------------------------------------------------------


def build_argv(command: tuple[str, ...], args: dict[str, Any]) -> list[str]:
    cmd = COMMANDS[command]
    by_name = {p.name: p for p in cmd.params}
    positional: list[str] = []
    options: list[str] = []
    for name, value in args.items():
        p = by_name[name]
        if p.param_type_name == "argument":
            positional.append(str(value))
        elif value is True:
            options.append(p.opts[0])
        elif isinstance(value, list):
            for v in value:
                options += [p.opts[0], str(v)]
        else:
            options += [p.opts[0], str(value)]
    return [*command, *positional, *options]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(autouse=True)
def no_server(monkeypatch):
    """A command that would start serving (uvicorn) has accepted its input: fail instead of blocking."""
    try:
        import uvicorn
    except ImportError:  # serving not installed: nothing can start
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the server started: the bad input was accepted")

    monkeypatch.setattr(uvicorn, "run", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly_in_one_line(case: Case, world: World, tmp_path: Path):
    out = tmp_path / ("out.npy" if case.command in FILE_OUTPUT else "out")
    args = dict(baseline_args(world, out)[case.command])
    if case.succeeds:  # a read-only input
        folder = Path(args[case.param])
        before = _snapshot(folder)
        with read_only(folder):
            result = CliRunner().invoke(app, build_argv(case.command, args))
        assert result.exit_code == 0, result.output
        assert _snapshot(folder) == before, "the command wrote into its input"
        return
    value, expect, extra = case.make(world, tmp_path)
    context = ROLE_CONTEXT.get((case.command, case.param))
    if context is not None:
        args.update(context(world))
    args[case.param] = value
    read_only_folder = extra.pop("__read_only__", None)
    untouched = extra.pop("__untouched__", None)
    before = _snapshot(untouched) if untouched is not None and untouched.is_dir() else None
    args.update(extra)
    argv = build_argv(case.command, args)
    option = next(p for p in COMMANDS[case.command].params if p.name == case.param)
    names = [*expect, *(option.opts or []), case.param, case.param.replace("_", "-")]
    guard = read_only(read_only_folder) if read_only_folder else contextlib.nullcontext()
    with guard:
        result = CliRunner().invoke(app, argv)
    shown = f"twinv2 {' '.join(argv)}\nexit {result.exit_code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"traceback: {result.exception!r}\n{shown}"
    assert result.exit_code != 0, f"accepted a bad input\n{shown}"
    assert "Traceback" not in result.output, shown
    assert result.stdout == "", f"output on stdout\n{shown}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line\n{shown}"
    assert any(n and str(n) in lines[0] for n in names), f"the error names none of {names}\n{shown}"
    if "out" in args and args["out"] == out:
        assert not out.exists(), f"partial output left at {out}\n{shown}"
    leftovers = [p.name for p in tmp_path.rglob(".*.tmp")] + [p.name for p in tmp_path.rglob(".*.old-*")]
    assert not leftovers, f"temporary files left: {leftovers}\n{shown}"
    if untouched is not None:
        assert untouched.exists() and (before is None or _snapshot(untouched) == before), \
            f"the command replaced {untouched}\n{shown}"


# ---- failed file operations inside a command ---------------------------------------------------------------


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/part-00001.parquet"),
    PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/readonly/stats.png"),
    OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/x", "/mnt/ro/y"),
], ids=["disk full", "permission denied", "read-only filesystem (two paths)"])
def test_os_error_inside_a_command_is_one_line_naming_the_file(error, monkeypatch):
    """Not-found was the only OSError the CLI caught; disk full and the others were tracebacks."""
    def fail(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr("twinv2.compress.stats.compression_stats", fail)
    result = CliRunner().invoke(app, ["compress", "stats", "/anything"])
    assert result.exit_code == 2 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert error.filename in line and error.strerror in line
