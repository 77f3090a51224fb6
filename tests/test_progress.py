"""vlkit.progress: bars only on a terminal, silenced by the caller (never through the environment)."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from vlkit import progress as bars
from vlkit.protocols.bench_progress import BenchProgress
from vlkit.protocols.cells import Cell

# subprocesses run from tests/: from the repository root, `python -c` would import the source tree's
# vlkit/ (sys.path[0] is the cwd) instead of the installed package, which maps cli/ to vlkit.cli
TESTS_DIR = str(Path(__file__).resolve().parent)


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def use_terminal(monkeypatch: pytest.MonkeyPatch) -> FakeTerminal:
    """Make stderr a terminal and unset the user's switches (conftest sets VLKIT_QUIET=1).

    Called in the test body: pytest's output capture replaces sys.stderr after fixtures run.
    """
    for name in ("VLKIT_QUIET", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", fake)
    return fake


def test_a_terminal_shows_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = use_terminal(monkeypatch)
    with bars.progress(total=4, description="encoding colours") as bar:
        assert bar.shown
        bar.advance(4)
    assert "encoding colours" in terminal.getvalue()


def test_a_non_terminal_stderr_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLKIT_QUIET", raising=False)
    pipe = io.StringIO()  # isatty() is False, as for a pipe or a log file
    monkeypatch.setattr(sys, "stderr", pipe)
    assert not bars.bars_enabled()
    with bars.progress(total=3, description="encoding") as bar:
        bar.advance(3)
        bar.update(description="other")
        assert not bar.shown
    with bars.tally(total=5, done=1, description="bench", unit="cells") as outer:
        outer.update(completed=2, eta="0:00:01")
        assert not outer.shown
    assert pipe.getvalue() == ""


def test_vlkit_quiet_is_read_never_written(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = use_terminal(monkeypatch)
    monkeypatch.setenv("VLKIT_QUIET", "1")
    with bars.progress(total=2, description="x") as bar:
        assert not bar.shown
    with bars.tally(total=2, done=0, description="bench"):
        pass
    assert os.environ["VLKIT_QUIET"] == "1" and terminal.getvalue() == ""


def test_nested_bars_are_silenced_without_touching_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = use_terminal(monkeypatch)
    before = dict(os.environ)
    with bars.tally(total=3, done=1, description="bench", unit="cells") as outer:
        assert outer.shown
        with bars.progress(total=10, description="encoding inner") as inner:
            assert not inner.shown and dict(os.environ) == before
            inner.advance(10)
        outer.update(completed=2, eta="0:00:05")
    assert dict(os.environ) == before
    text = terminal.getvalue()
    assert "bench" in text and "left ~0:00:05" in text and "encoding inner" not in text
    with bars.progress(total=1, description="after") as bar:  # the switch is off again
        assert bar.shown


def test_quiet_nests_and_is_undone_by_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    use_terminal(monkeypatch)
    with pytest.raises(RuntimeError):
        with bars.quiet():
            with bars.quiet():
                assert not bars.bars_enabled()
            assert not bars.bars_enabled()  # the outer block still silences
            raise RuntimeError
    assert bars.bars_enabled()


def test_format_seconds() -> None:
    assert bars.format_seconds(None) == "?"
    assert bars.format_seconds(3725.4) == "1:02:05"
    assert bars.format_seconds(59.6) == "0:01:00"


def test_bench_estimate_uses_each_methods_mean_then_the_overall_mean() -> None:
    cells = [Cell("d", m, 1, s) for m, s in (("a", 1), ("a", 2), ("b", 1), ("c", 1))]
    history = [{"cell": {"method": "a"}, "result": {"wall_seconds": 2.0}},
               {"cell": {"method": "a"}, "result": {"wall_seconds": 4.0}},
               {"cell": {"method": "b"}, "result": {}}]  # a record without timing adds nothing
    bench = BenchProgress(total=6, done=2, todo=cells, history=history)
    assert bench.eta() == pytest.approx(3.0 + 3.0 + 3.0 + 3.0)  # b and c have no timing: the overall mean
    bench.finish(cells[2], 9.0)  # b took 9 s: a 3, 3; c the mean of {2, 4, 9}
    assert bench.eta() == pytest.approx(3.0 + 3.0 + 5.0) and bench.done == 3
    bench.finish(cells[3], 1.0, ok=False)  # a failure leaves the count and the timings as they were
    assert bench.eta() == pytest.approx(6.0) and bench.done == 3
    assert BenchProgress(1, 0, cells[:1], []).eta() is None


def test_bench_bar_silences_the_loops_under_it(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = use_terminal(monkeypatch)
    cell = Cell("fashion", "coop", 4, 1)
    with BenchProgress(total=1, done=0, todo=[cell], history=[]) as bench:
        bench.start(cell)
        with bars.progress(total=5, description="training coop") as inner:
            assert not inner.shown
        bench.finish(cell, 2.0)
    text = terminal.getvalue()
    assert "bench done" in text and "training coop" not in text
    assert bars.bars_enabled()


def use_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """stderr is a file (not a terminal) and no VLKIT_QUIET: progress goes to the log as lines."""
    monkeypatch.delenv("VLKIT_QUIET", raising=False)
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    return pipe


def test_a_log_gets_a_line_every_interval_for_a_long_step(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    pipe = use_log(monkeypatch)
    clock = [1000.0]
    monkeypatch.setattr(bars.time, "monotonic", lambda: clock[0])
    caplog.set_level("INFO", logger="vlkit.progress")
    assert bars.log_lines_enabled() and not bars.bars_enabled()
    with bars.progress(total=100, description="encoding shop view 0") as bar:
        for _ in range(100):
            clock[0] += 1.0  # one step a second: 100 s in all
            bar.advance()
    lines = [r.getMessage() for r in caplog.records if r.name == "vlkit.progress"]
    assert len(lines) == 4, lines  # at 30, 60 and 90 s, and the end
    assert lines[0] == "encoding shop view 0: 30/100 after 0:00:30 (about 0:01:10 left)"
    assert lines[-1].startswith("encoding shop view 0: 100/100 done after 0:01:40")
    assert pipe.getvalue() == ""  # no bar drawn into the file


def test_a_short_step_writes_nothing_to_the_log(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    use_log(monkeypatch)
    caplog.set_level("INFO", logger="vlkit.progress")
    with bars.progress(total=3, description="quick") as bar:
        bar.advance(3)
    assert not [r for r in caplog.records if r.name == "vlkit.progress"]


def test_the_bench_logs_one_line_per_finished_cell_when_stderr_is_a_log(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    use_log(monkeypatch)
    caplog.set_level("INFO", logger="vlkit.progress")
    cells = [Cell("shop", "coop", 4, seed) for seed in (1, 2)]
    with BenchProgress(total=2, done=0, todo=cells, history=[]) as tracker:
        for cell in cells:
            tracker.start(cell)
            tracker.finish(cell, 12.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "vlkit.progress"]
    assert len(lines) == 2
    assert "1/2 cells" in lines[0] and "about 0:00:12 left" in lines[0] and "2/2 cells" in lines[1]


def test_vlkit_quiet_silences_the_log_lines_too(monkeypatch: pytest.MonkeyPatch) -> None:
    use_log(monkeypatch)
    monkeypatch.setenv("VLKIT_QUIET", "1")
    assert not bars.log_lines_enabled()
    with bars.progress(total=2, description="x") as bar:
        assert type(bar) is bars.Bar


def test_the_cli_shows_progress_lines_in_a_redirected_log(tmp_path) -> None:
    """A subprocess with stderr to a file: the progress logger's lines reach the file."""
    import subprocess

    code = ("import logging, time\n"
            "from vlkit.cli.common import setup_logging\n"
            "from vlkit import progress\n"
            "setup_logging()\n"
            "progress.LOG_INTERVAL = 0.0\n"
            "with progress.progress(total=2, description='training coop') as bar:\n"
            "    bar.interval = 0.0\n"
            "    bar.advance(); bar.advance()\n")
    log_file = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if k != "VLKIT_QUIET"}
    with open(log_file, "w") as stderr:
        subprocess.run([sys.executable, "-c", code], cwd=TESTS_DIR, stderr=stderr, env=env, check=True, timeout=120)
    text = log_file.read_text()
    assert "INFO vlkit.progress: training coop: 1/2" in text and "2/2 done" in text
