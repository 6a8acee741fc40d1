"""Checkpoints: one file per state, written atomically (temporary file, fsync, ``os.replace``).

A reader sees either the previous complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by :func:`save` onto the CPU. Only our own files: ``weights_only=False``."""
    return torch.load(path, map_location="cpu", weights_only=False)
