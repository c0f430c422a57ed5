"""Claims: several `zoo run` processes (on one machine, or on several sharing a file system)
may work on one output folder. A run is claimed before it starts by creating its partial
folder ``OUT/runs/.<run_id>.partial`` (``mkdir`` is atomic) and writing ``claim.json`` in it
(host, process id, start time). Another process skips a run whose claim is alive and takes
over one whose holder is dead: the process is gone (same host), or the claim is older than
``STALE_SECONDS`` (another host, where liveness cannot be checked).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

CLAIM_FILE = "claim.json"
STALE_SECONDS = 24 * 3600.0  # a claim from another host older than this is taken over
YOUNG_SECONDS = 30.0  # a partial folder without its claim file yet is being claimed right now


def partial_folder(runs_dir: Path, run_id: str) -> Path:
    return Path(runs_dir) / f".{run_id}.partial"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a zombie has exited: its claim is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def holder(partial: Path) -> dict | None:
    """The live claim on ``partial`` as {host, pid, started}, or None when nobody holds it."""
    try:
        claim = json.loads((partial / CLAIM_FILE).read_text())
    except FileNotFoundError:
        if not partial.is_dir():
            return None
        try:  # created a moment ago, its claim file not yet written: held
            young = time.time() - partial.stat().st_mtime < YOUNG_SECONDS
        except OSError:
            return None
        return {"host": "?", "pid": 0, "started": partial.stat().st_mtime} if young else None
    except (OSError, ValueError):
        return None
    if claim.get("host") == socket.gethostname():
        return claim if _process_alive(int(claim.get("pid", 0))) else None
    return claim if time.time() - float(claim.get("started", 0)) < STALE_SECONDS else None


def claim(runs_dir: Path, run_id: str) -> Path | None:
    """Claim a run for this process: its fresh partial folder, or None when another live
    process holds it. A dead holder's folder is removed and the run claimed anew."""
    partial = partial_folder(runs_dir, run_id)
    for _ in range(2):
        try:
            partial.mkdir(parents=True)
        except FileExistsError:
            if holder(partial) is not None:
                return None
            shutil.rmtree(partial, ignore_errors=True)  # its holder died: redo the run
            continue
        from zoo.results import write_json

        write_json(partial / CLAIM_FILE, {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
        return partial
    return None


def remove_dead_partials(runs_dir: Path) -> None:
    """Partial folders whose holder died (a killed suite); live ones belong to other processes."""
    for partial in Path(runs_dir).glob(".*.partial"):
        if holder(partial) is None:
            shutil.rmtree(partial, ignore_errors=True)
