"""Read an offline W&B run file (.wandb: LevelDB-style log of protobuf records) back, for tests."""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7  # ":W&B" + magic + version


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data, pos, out, buf = path.read_bytes(), HEADER, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
    records = []
    for raw in out:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        records.append(rec)
    return records


def summary_of(path: Path) -> dict[str, str]:
    summary: dict[str, str] = {}
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "summary":
            summary.update({u.key: u.value_json for u in rec.summary.update if u.key})
    return summary


def run_info(path: Path) -> tuple[str, str, dict[str, str]]:
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "run":
            return rec.run.run_group, rec.run.display_name, {u.key: u.value_json for u in rec.run.config.update}
    raise AssertionError(f"no run record in {path}")
