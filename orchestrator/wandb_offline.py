"""Read an offline W&B run back from its ``.wandb`` file (what a test or ``tightrope report`` can check).

wandb 0.31 has no Python reader any more, so this decodes the file itself. The format (wandb's "datastore",
LevelDB's log format with a header) is::

    file    := header block*
    header  := ident ":W&B" (4 bytes) | magic 0xBEE1 (uint16 LE) | version 0 (uint8)     # 7 bytes, in block 0
    block   := record* trailer?                        # 32 KiB blocks; a trailer of < 7 zero bytes is skipped
    record  := crc32 (uint32 LE) | length (uint16 LE) | type (uint8) | data[length]
    type    := FULL=1 | FIRST=2 | MIDDLE=3 | LAST=4    # FIRST MIDDLE* LAST fragments join into one payload

Each payload is a ``wandb.proto.wandb_internal_pb2.Record``. Of those, this module keeps ``run`` (id, group,
name, initial config), ``history`` (one dict per ``log`` call, ``_step`` included), ``summary`` and
``config`` updates, and ``exit`` (the exit code).

    for path in find_runs(tmp_path):
        run = read_run(path)
        run.history[0]["val/ce"], run.summary["status"], run.exit_code
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = struct.Struct("<4sHB")  # ident, magic, version
REC = struct.Struct("<IHB")  # crc32, length, type
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a W&B datastore, or is corrupt before its end."""


@dataclass
class OfflineRun:
    path: Path
    run_id: str | None = None
    group: str | None = None
    name: str | None = None
    project: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None  # None: the run never finished (no exit record)
    truncated: bool = False  # the file ended inside a record (a run still being written)

    @property
    def steps(self) -> list[int]:
        return [h["_step"] for h in self.history if "_step" in h]


def iter_payloads(data: bytes, check_crc: bool = True) -> tuple[list[bytes], bool]:
    """The record payloads of a datastore file, and whether it ended mid-record."""
    if len(data) < HEADER.size:
        raise WandbFileError("too short for a W&B datastore header")
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC or version != VERSION:
        raise WandbFileError(f"not a W&B datastore (header {data[:7]!r})")
    out: list[bytes] = []
    pos, pending = HEADER.size, None
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < REC.size:  # trailer: the next record starts in the next block
            pos += left
            continue
        if pos + REC.size > len(data):
            return out, True
        crc, length, kind = REC.unpack_from(data, pos)
        if crc == 0 and length == 0 and kind == 0:  # zero padding (preallocated / unflushed tail)
            return out, pending is not None
        start, end = pos + REC.size, pos + REC.size + length
        if end > len(data):
            return out, True
        chunk = data[start:end]
        if check_crc and zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            raise WandbFileError(f"bad checksum at byte {pos}")
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = bytearray(chunk)
        elif kind in (MIDDLE, LAST):
            if pending is None:
                raise WandbFileError(f"fragment without a FIRST record at byte {pos}")
            pending += chunk
            if kind == LAST:
                out.append(bytes(pending))
                pending = None
        else:
            raise WandbFileError(f"unknown record type {kind} at byte {pos}")
        pos = end
    return out, pending is not None


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _value(item) -> Any:
    """A HistoryItem / SummaryItem / ConfigItem value: typed fields when set, else its JSON."""
    which = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if which and which not in ("value_json", "json"):
        v = getattr(item, which)
        return None if which == "none" else v
    text = item.value_json if not which else getattr(item, which)
    return json.loads(text) if text else None


def _config_value(v: Any) -> Any:
    return v["value"] if isinstance(v, dict) and set(v) >= {"value"} and len(v) <= 2 else v


def read_run(path: str | Path) -> OfflineRun:
    """Decode one ``run-<id>.wandb`` file. Tolerates a file whose run is still being written."""
    from wandb.proto import wandb_internal_pb2 as pb  # orchestrator owns wandb; imported only when used

    path = Path(path)
    payloads, truncated = iter_payloads(path.read_bytes())
    run = OfflineRun(path=path, truncated=truncated)
    for raw in payloads:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.group, run.name, run.project = r.run_id, r.run_group, r.display_name, r.project
            for it in r.config.update:
                run.config[_key(it)] = _config_value(_value(it))
            for it in r.summary.update:
                run.summary[_key(it)] = _value(it)
        elif kind == "config":
            for it in rec.config.update:
                run.config[_key(it)] = _config_value(_value(it))
            for it in rec.config.remove:
                run.config.pop(_key(it), None)
        elif kind == "history":
            row = {_key(it): _value(it) for it in rec.history.item}
            if rec.history.HasField("step") and "_step" not in row:
                row["_step"] = rec.history.step.num
            run.history.append(row)
        elif kind == "summary":
            for it in rec.summary.update:
                run.summary[_key(it)] = _value(it)
            for it in rec.summary.remove:
                run.summary.pop(_key(it), None)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    run.config = {k: v for k, v in run.config.items() if k != "_wandb"}
    return run


def find_runs(wandb_dir: str | Path) -> list[Path]:
    """``<dir>/wandb/offline-run-*-<id>/run-<id>.wandb`` (also accepts the inner ``wandb`` folder), sorted."""
    root = Path(wandb_dir)
    if (root / "wandb").is_dir():
        root = root / "wandb"
    return sorted(root.glob("offline-run-*/run-*.wandb"))
