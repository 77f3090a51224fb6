"""vlkit.io: the cache root, atomic file and folder writes, cross-process file locks."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vlkit import io
from vlkit.errors import VlkitError

ROOT = Path(__file__).resolve().parents[1]


def test_cache_root_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "c"))
    assert io.cache_root() == tmp_path / "c"
    monkeypatch.setenv("VLKIT_CACHE", "~/elsewhere")
    assert io.cache_root() == Path.home() / "elsewhere"
    monkeypatch.delenv("VLKIT_CACHE")
    assert io.cache_root() == Path.home() / ".cache" / "vlkit"


def test_feature_store_root_is_the_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlkit.features.store import FeatureStore

    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path))
    assert FeatureStore().root == tmp_path


def test_writes_hold_exactly_the_content_and_leave_no_temp(tmp_path: Path) -> None:
    obj = {"b": [1, 2.5], "a": {"z": None, "y": "é"}}
    io.atomic_write_json(tmp_path / "sub" / "x.json", obj)  # the parent folder is created
    assert (tmp_path / "sub" / "x.json").read_bytes() == json.dumps(obj, indent=1, sort_keys=True).encode()
    io.atomic_write_json(tmp_path / "y.json", {"b": 1, "p": Path("/a")}, sort_keys=False, default=str)
    assert (tmp_path / "y.json").read_text() == '{\n "b": 1,\n "p": "/a"\n}'
    io.atomic_write_text(tmp_path / "t.md", "ünï\n")
    assert (tmp_path / "t.md").read_bytes() == "ünï\n".encode()
    io.atomic_write_bytes(tmp_path / "t.md", b"\x00\x01")  # replaces
    assert (tmp_path / "t.md").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "t.md", "x.json", "y.json"]


def test_arrays_and_safetensors_through_atomic_file(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float16).reshape(3, 4)
    with io.atomic_file(tmp_path / "a.npy") as tmp:
        np.save(tmp, array)  # the temp name ends in ".npy" too, so np.save adds no second suffix
        assert not (tmp_path / "a.npy").exists()  # nothing visible until the block ends
    assert np.array_equal(np.load(tmp_path / "a.npy"), array)
    tensors = {"w": torch.randn(2, 3)}
    with io.atomic_file(tmp_path / "s.safetensors") as tmp:
        save_file(tensors, str(tmp))
    assert torch.equal(load_file(str(tmp_path / "s.safetensors"))["w"], tensors["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "s.safetensors"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with io.atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_killed_file_writer_leaves_the_old_file_and_a_hidden_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    io.atomic_write_json(target, {"v": 1})
    pid = os.fork()
    if pid == 0:  # child: killed after writing half of the new content
        try:
            with io.atomic_file(target) as tmp:
                tmp.write_bytes(b'{"v": ')
                os._exit(0)  # like SIGKILL: no cleanup runs
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    assert json.loads(target.read_text()) == {"v": 1}
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and re.fullmatch(r"\.x\.json\..*\.tmp\.json", leftovers[0])


def test_atomic_dir_replaces_the_whole_folder_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "state"
    with io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "gone.txt").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "gone.txt"]
    assert target.stat().st_mode & 0o777 == 0o755 or os.name != "posix"
    with io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_text() == "2"
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("3")
            raise KeyboardInterrupt
    assert (target / "a.txt").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["state"]  # no temp or old folder left


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_killed_folder_writer_is_cleaned_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "built"
    pid = os.fork()
    if pid == 0:
        try:
            with io.atomic_dir(target) as tmp:
                (tmp / "half").write_bytes(b"x")
                os._exit(0)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    assert not target.exists() and len(list(tmp_path.iterdir())) == 1  # only the dead writer's temp folder
    live = io.temp_dir_beside(target)  # a live writer's temp folder is never touched
    with io.atomic_dir(target) as tmp:
        (tmp / "ok").write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["built", live.name])
    assert [p.name for p in target.iterdir()] == ["ok"]


def test_a_held_lock_refuses_a_second_holder_with_the_callers_message(tmp_path: Path) -> None:
    first = io.FileLock(tmp_path / "x.lock").acquire(wait=False)
    with pytest.raises(VlkitError, match="^someone else is here: wait$"):
        io.FileLock(tmp_path / "x.lock", busy="someone else is here: wait").acquire(wait=False)
    first.release()
    with io.FileLock(tmp_path / "x.lock") as again:
        assert again.held
    assert not again.held


def test_a_waiting_lock_gets_it_when_the_holder_lets_go(tmp_path: Path) -> None:
    order: list[str] = []
    held = threading.Event()

    def hold_then_let_go() -> None:
        with io.FileLock(tmp_path / "x.lock"):
            held.set()
            time.sleep(0.3)
            order.append("released")

    thread = threading.Thread(target=hold_then_let_go)
    thread.start()
    held.wait(10)
    with io.FileLock(tmp_path / "x.lock"):
        order.append("acquired")
    thread.join()
    assert order == ["released", "acquired"]


def test_a_lock_held_by_another_process_is_refused(tmp_path: Path) -> None:
    code = ("import sys; from vlkit.io import FileLock; lock = FileLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); sys.stdin.read(); lock.release()")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "x.lock")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(VlkitError, match="locked by another vlkit process"):
            io.FileLock(tmp_path / "x.lock").acquire(wait=False)
    finally:
        child.communicate("", timeout=60)
    io.FileLock(tmp_path / "x.lock").acquire(wait=False).release()  # free once the holder let go


def test_only_io_renames_or_locks_files() -> None:
    """One path: every atomic rename and file lock in vlkit goes through vlkit/io.py."""
    pattern = re.compile(r"\bfcntl\b|os\.replace\(|os\.rename\(|\.rename\(|msvcrt")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for folder in ("vlkit", "caches", "prompts", "cli")
                 for p in sorted((ROOT / folder).rglob("*.py")) if p != ROOT / "vlkit" / "io.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_io_imports_nothing_from_vlkit_but_errors() -> None:
    tree = ast.parse((ROOT / "vlkit" / "io.py").read_text())
    names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {n for n in names if n.startswith("vlkit")} == {"vlkit.errors"}


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int, file_mode: int, dir_mode: int) -> None:
    old = os.umask(mask)
    try:
        assert io.current_umask() == mask
        io.atomic_write_json(tmp_path / "a.json", {"x": 1})
        with io.atomic_file(tmp_path / "b.npy") as tmp:
            np.save(tmp, np.zeros(2))
        with io.atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inside.txt").write_text("x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives under this umask: the atomic routes must match it
    finally:
        os.umask(old)
    assert (plain.stat().st_mode & 0o777) == file_mode
    for name in ("a.json", "b.npy", "folder/inside.txt"):
        assert ((tmp_path / name).stat().st_mode & 0o777) == file_mode, name
    assert ((tmp_path / "folder").stat().st_mode & 0o777) == dir_mode


def test_read_json_names_the_file_and_the_fix(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"a": 1}')
    assert io.read_json(good, "record", "fix it") == {"a": 1}
    for content in (b"{not json", b"\x00\xff\xfe", b""):
        (tmp_path / "bad.json").write_bytes(content)
        with pytest.raises(VlkitError, match=r"record .*bad\.json is damaged .*: fix it$"):
            io.read_json(tmp_path / "bad.json", "record", "fix it")
    with pytest.raises(VlkitError, match="missing: fix it"):
        io.read_json(tmp_path / "none.json", "record", "fix it")
