"""Start-up (issue 21, item 8): `vlkit --help` and `vlkit methods` load no heavy library; the
methods catalog agrees with the live registry; the global options --version and --threads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

# subprocesses run from tests/: from the repository root, `python -c` would import the source tree's
# vlkit/ (sys.path[0] is the cwd) instead of the installed package, which maps cli/ to vlkit.cli
TESTS_DIR = str(Path(__file__).resolve().parent)

HEAVY = ["torch", "open_clip", "faiss", "sklearn", "matplotlib"]


def imported_after(args: list[str]) -> tuple[int, set[str], str]:
    """Run the CLI with ``args`` in a fresh interpreter; its exit code, the heavy modules it loaded, its stdout."""
    code = ("import sys, json\n"
            "import vlkit.cli.main as m\n"
            "try:\n"
            f"    m.app({args!r})\n"
            "except SystemExit as exc:\n"
            "    code = exc.code or 0\n"
            f"heavy = sorted(n for n in {HEAVY!r} if n in sys.modules)\n"
            "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=TESTS_DIR, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], set(report["heavy"]), done.stdout


@pytest.mark.parametrize("args", [["--help"], ["methods"], ["--version"], ["fit", "--help"]])
def test_start_up_imports_no_heavy_library(args: list[str]) -> None:
    code, heavy, _ = imported_after(args)
    assert code == 0 and heavy == set(), f"vlkit {' '.join(args)} imported {sorted(heavy)}"


def test_import_vlkit_is_lazy_but_public_names_work() -> None:
    code = ("import sys, vlkit\n"
            f"assert not [n for n in {HEAVY!r} if n in sys.modules], 'import vlkit loaded a heavy library'\n"
            "from vlkit import Backbone, create_method, Result, VlkitError\n"
            "assert 'torch' in sys.modules and callable(create_method)\n"
            "assert set(vlkit.__all__) <= set(dir(vlkit))\n"
            "try:\n"
            "    vlkit.no_such_name\n"
            "except AttributeError as exc:\n"
            "    assert 'no_such_name' in str(exc)\n"
            "else:\n"
            "    raise SystemExit('an unknown name did not raise')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=TESTS_DIR, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_catalog_matches_the_live_registry() -> None:
    from vlkit.cli.methods_catalog import build_catalog, read_catalog

    assert read_catalog() == build_catalog(), "stale catalog: run `python -m vlkit.cli.methods_catalog`"


def test_parameter_counts_use_the_models_feature_width() -> None:
    from vlkit.backbones.mini import MINI_EMBED_DIM
    from vlkit.cli.methods_catalog import OFFLINE_DIMS, feature_dim, methods_rows

    assert OFFLINE_DIMS["vlkit-mini"] == MINI_EMBED_DIM == 384
    assert feature_dim("vlkit-mini") == 384
    assert feature_dim("ViT-B-16") == 512 and feature_dim("ViT-L-14") == 768  # open_clip's configs, not loaded
    probe = {r["name"]: r["trainable_parameters"] for r in methods_rows(10, 384)}
    assert probe["linear-probe"] == 10 * 384 + 10 and probe["zero-shot"] == 0
    result = CliRunner().invoke(_app(), ["methods", "--output", os.devnull])
    assert result.exit_code == 0 and "384-d" in result.output and "3,850" in result.output


def test_test_tiny_width_is_the_loaded_ones(tiny_backbone) -> None:
    from vlkit.cli.methods_catalog import OFFLINE_DIMS

    assert OFFLINE_DIMS["test-tiny"] == tiny_backbone.embed_dim


def _app():
    from vlkit.cli.main import app

    return app


def test_version_and_threads_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import vlkit

    result = CliRunner().invoke(_app(), ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"vlkit {vlkit.__version__}"
    result = CliRunner().invoke(_app(), ["--threads", "0", "methods"])
    assert result.exit_code != 0 and "--threads" in result.output


def test_configure_threads_sets_a_passive_wait_unless_the_user_chose() -> None:
    from vlkit.cli.threads import configure_threads

    env: dict[str, str] = {}
    assert configure_threads(3, env) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "3",
                                         "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert configure_threads(None, env) == {} and env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_threads_reach_torch_in_a_fresh_process() -> None:
    code = ("import os, sys\n"
            "import vlkit.cli.main as m\n"
            "try:\n"
            "    m.app(['--threads', '1', 'datasets'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "import torch\n"
            "print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", code], cwd=TESTS_DIR, capture_output=True, text=True, timeout=300, env=env)
    assert done.stdout.split()[-2:] == ["1", "PASSIVE"], done.stderr


def test_upgrade_defaults_agree_with_the_library() -> None:
    from vlkit.apps import upgrade as lib
    from vlkit.cli import upgrade_commands as cli

    assert (cli.DEFAULT_ALPHA, cli.DEFAULT_BETA, cli.RETUNE_MIN) == (lib.DEFAULT_ALPHA, lib.DEFAULT_BETA,
                                                                     lib.RETUNE_MIN)


def test_fit_help_names_the_folder_layouts() -> None:
    result = CliRunner().invoke(_app(), ["fit", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "images/" in text and "split JSON" in text and "train/" in text and "val/" in text


def test_skip_corrupt_drops_unreadable_images_for_predict_and_add(tmp_path, caplog) -> None:
    from PIL import Image

    from vlkit.cli.upgrade_commands import readable_images
    from vlkit.errors import VlkitError

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(good)
    bad.write_bytes(b"not an image")
    assert readable_images([good, bad], skip_corrupt=False) == [good, bad]  # the library then names the bad one
    with caplog.at_level("WARNING", logger="vlkit.data"):
        assert readable_images([good, bad], skip_corrupt=True) == [good]
    assert "skipped 1 unreadable image(s), first: " in caplog.text and "bad.png" in caplog.text
    with pytest.raises(VlkitError, match="none of the 1 image"):
        readable_images([bad], skip_corrupt=True)
    for command in (["predict", "--help"], ["upgrade", "add", "--help"]):
        assert "--skip-corrupt" in CliRunner().invoke(_app(), command).output


def test_a_repeated_warning_prints_once() -> None:
    import logging

    from vlkit.cli.common import OnceFilter

    once = OnceFilter()
    record = logging.LogRecord("vlkit.data", logging.WARNING, "", 0, "skipped %d unreadable image(s)", (3,), None)
    again = logging.LogRecord("vlkit.data", logging.WARNING, "", 0, "skipped %d unreadable image(s)", (3,), None)
    other = logging.LogRecord("vlkit.data", logging.WARNING, "", 0, "skipped %d unreadable image(s)", (4,), None)
    assert once.filter(record) and not once.filter(again) and once.filter(other)


def test_tables_keep_whole_headers_when_printed_to_a_file(capsys) -> None:
    from vlkit.cli.common import table

    rows = [{"method": f"method-{i}", "trainable_parameters": 123456, "latency_ms_per_image": 1.5,
             "paper": "Somebody et al., A Long Title That Would Wrap At Eighty Columns, CONF 2024"} for i in range(3)]
    table(rows, ["method", "trainable_parameters", "latency_ms_per_image", "paper"], title="wide")
    text = capsys.readouterr().out
    assert "trainable_parameters" in text and "latency_ms_per_image" in text and "…" not in text
    assert "A Long Title That Would Wrap At Eighty Columns, CONF 2024" in text
