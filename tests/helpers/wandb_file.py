"""Read an offline W&B run back from its file (``run-<id>.wandb``), for tests.

wandb 0.31 ships no Python reader for this file (its own tools read it in Go), and a byte search of it
says little: a key split across a block boundary is missed, and a file the service has not yet flushed
holds only its header. ``wandb.finish()`` returns before the service writes the file (it only tells the
service to close the run); ``wandb.teardown()`` waits for it, so a test reading a run it made in its
own process calls that first.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each a 7-byte header
(CRC-32 of type and data, length, type) and a piece of one serialised ``Record`` protobuf.
"""

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1, version 0
BLOCK = 32768
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class RunFile:
    run: pb.RunRecord | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[: len(FILE_HEADER)] == FILE_HEADER, f"{path} is not a W&B run file of format version 0"
    out, parts, pos = [], [], len(FILE_HEADER)
    while pos + CHUNK_HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER.size:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        chunk = data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        assert len(chunk) == length, f"{path} ends inside a record (at byte {pos})"
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad checksum at byte {pos}"
        pos += CHUNK_HEADER.size + length
        parts.append(chunk)
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            out.append(record)
            parts = []
    return out


def _items(updates) -> dict[str, Any]:
    return {".".join(u.nested_key) or u.key: json.loads(u.value_json) for u in updates}


def read_run(path: Path) -> RunFile:
    """The run in ``path``: its run record, config, history rows, summary (last values) and exit code."""
    run = RunFile()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run = record.run
            run.config |= _items(record.run.config.update)
        elif kind == "config":
            run.config |= _items(record.config.update)
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary |= _items(record.summary.update)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_run_files(root: Path, pattern: str = "**/wandb/offline-run-*/run-*.wandb") -> list[Path]:
    return sorted(Path(root).glob(pattern))
