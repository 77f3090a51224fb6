"""The README's examples run as written (issue 21): every ```bash block is run, or skipped with a stated reason."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

README = Path(__file__).parents[1] / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip \((.+)\) -->")
CI = "<!-- ci: test command -->"


def bash_blocks() -> list[tuple[str, str]]:
    """Each ```bash block of the README with the line before its fence."""
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = lines.index("```", i + 1)
            blocks.append((lines[i - 1] if i else "", "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return blocks


def runnable_blocks() -> list[str]:
    """The blocks the test runs: all but the CI test command and those marked skipped."""
    return [body for before, body in bash_blocks() if before.strip() != CI and not SKIP.search(before)]


def test_every_block_is_run_or_skipped_for_a_reason() -> None:
    blocks = bash_blocks()
    assert len(blocks) >= 3
    for before, body in blocks:
        skipped = SKIP.search(before)
        assert before.strip() == CI or not skipped or skipped.group(1).strip(), body
    assert runnable_blocks(), "no README block is run: the examples would go untested"


def test_every_vlkit_command_the_readme_names_exists() -> None:
    """Each `vlkit [global options] COMMAND [SUBCOMMAND]` in the README answers --help (no command renamed away)."""
    from vlkit.cli.main import app

    text = README.read_text()
    commands = set()
    for match in re.finditer(r"vlkit((?: --[a-z-]+(?: \d+)?)*) ([a-z]+)(?: ([a-z]+))?", text):
        commands.add((match.group(2), match.group(3)))
    assert ("fewshot", None) in {(c, None) for c, _ in commands}
    for command, sub in sorted(commands, key=str):
        if command in ("is", "ships", "was", "exists"):  # prose ("vlkit-mini is ...")
            continue
        args = [command, sub, "--help"] if command in ("upgrade", "features", "datasets") and sub else [command, "--help"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"README names `vlkit {' '.join(args[:-1])}`, which fails: {result.output}"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_readme_examples_run_as_written(tmp_path: Path) -> None:
    """Run each runnable block with bash -e in a fresh folder (a few minutes on 2 idle cores)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "VLKIT_QUIET": "1"}
    for body in runnable_blocks():
        done = subprocess.run(["bash", "-e", "-x", "-c", body], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=3000)
        last = [line for line in done.stderr.splitlines() if line.startswith("+ ")][-1:]
        assert done.returncode == 0, f"README command failed: {last} -> {done.stderr[-2000:]}"
    assert (tmp_path / "runs" / "tip4" / "run.json").is_file() and (tmp_path / "runs" / "shop").is_dir()
