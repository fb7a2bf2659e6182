"""Reading what an offline W&B run wrote (wandb ships no reader for its `.wandb` files): its summary and history
keys."""

from __future__ import annotations

import glob
import json
import struct
import time
from pathlib import Path

BLOCK, HEADER = 32768, 7


def read_wandb_records(path: Path):
    """The protobuf records of an offline run's `.wandb` file: wandb's LevelDB-style log (32 KiB blocks of chunks with
    a 7-byte header: CRC, length, type), decoded with wandb's own `Record` message."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    index, pending = 7, b""
    while index + HEADER <= len(data):
        if BLOCK - index % BLOCK < HEADER:  # a block's tail too short for a header is padding
            index += BLOCK - index % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[index:index + HEADER])
        if index + HEADER + length > len(data):  # still being written
            return
        chunk = data[index + HEADER:index + HEADER + length]
        index += HEADER + length
        if kind in (1, 4):  # full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):  # first / middle chunk
            pending += chunk


def offline_runs(wandb_dir: Path) -> list[Path]:
    return [Path(p) for p in glob.glob(str(wandb_dir / "wandb" / "offline-run-*" / "*.wandb"))]


def read_offline_run(path: Path, timeout: float = 60.0) -> tuple[dict, set]:
    """(summary, history keys) of a finished offline run's `.wandb` file. wandb's service process may still be writing
    the file's tail when `finish()` returns: wait for the run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_wandb_records(path))
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    summary, history = {}, set()
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            history.update(item.key or "/".join(item.nested_key) for item in record.history.item)
    return summary, history
