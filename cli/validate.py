"""Checks of the shared options, run before a command does any work.

:func:`check_options` looks at a command's keyword arguments by name (``seed``, ``views``,
``shots``, ``top_k``, ``device``, ``output``) and raises a one-line :class:`VlkitError`
naming the option, the value and what it takes, so a bad value never costs a model load
or a fit. ``vlkit.cli.common.user_errors`` calls it for every command.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from vlkit.errors import VlkitError
from vlkit.io import creation_folder, unwritable_reason

DEVICE_KINDS = ("cpu", "cuda", "cuda:N", "mps")


def check_at_least(option: str, minimum: int) -> Callable[[Any], None]:
    """A check that an integer option is ``>= minimum``."""
    def check(value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and value < minimum:
            raise VlkitError(f"{option} takes an integer >= {minimum}, got {value}")
    return check


def check_device(device: Any) -> None:
    """``--device``: cpu, cuda or cuda:N (when CUDA is there), mps (when MPS is there)."""
    if device is None:
        return
    text = str(device)
    if text == "cpu":
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None and text != "mps":
        raise VlkitError(f"--device {device!r} is not a device vlkit knows: use one of {', '.join(DEVICE_KINDS)}")
    import torch

    if text == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise VlkitError("--device mps: this machine has no MPS (Apple GPU) backend; use --device cpu")
        return
    if not torch.cuda.is_available():
        raise VlkitError(f"--device {device}: this machine has no CUDA GPU (or torch was built without CUDA); "
                         "use --device cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise VlkitError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0; use --device cuda:0")


def check_output(path: Any, option: str = "--output") -> None:
    """``--output``: a file path whose folder exists or can be created, and is writable.

    Nothing is left behind: the nearest existing folder is probed with a temp file that is
    deleted at once; missing folders below it are created only when the result is written.
    """
    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise VlkitError(f"{option} {path} is a folder: name a file such as {path / 'result.json'}")
    folder = creation_folder(path)
    if not folder.is_dir():
        raise VlkitError(f"{option} {path}: {folder} is a file, not a folder; name a file in a folder")
    if folder != path.parent and _is_virtual(folder):
        raise VlkitError(f"{option} {path}: {path.parent} does not exist and cannot be created under {folder}; "
                         "name a file in a writable folder")
    reason = unwritable_reason(folder)
    if reason is not None:
        raise VlkitError(f"{option} {path}: cannot write in {folder} ({reason}); name a file in a writable folder")


def _is_virtual(folder: Path) -> bool:
    """Whether ``folder`` is on a kernel filesystem (proc, sysfs) where no folder can be made."""
    resolved = folder.resolve()
    return any(resolved == Path(root) or Path(root) in resolved.parents for root in ("/proc", "/sys"))


OPTION_CHECKS: dict[str, Callable[[Any], None]] = {
    "seed": check_at_least("--seed", 0),
    "views": check_at_least("--views", 0),
    "shots": check_at_least("--shots", 1),
    "top_k": check_at_least("--top-k", 1),
    "retune_min": check_at_least("--retune-min", 2),
    "test_per_class": check_at_least("--test-per-class", 1),
    "device": check_device,
    "output": check_output,
}


def check_options(options: dict[str, Any]) -> None:
    """Run the check of every shared option present in ``options`` (a command's keyword arguments)."""
    for name, value in options.items():
        check = OPTION_CHECKS.get(name)
        if check is not None:
            check(value)


__all__ = ["OPTION_CHECKS", "check_at_least", "check_device", "check_options", "check_output"]
