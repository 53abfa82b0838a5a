"""Where a result came from: the code, the config, the command and the machine that made it.

Every report a reader may re-check (`compare.json`, `loop.json`, each benchmark's JSON) carries
`provenance(...)` under a `provenance` key. `mixed_provenance` says why two reports cannot be
pooled as one comparison (different code or config).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def commit() -> str | None:
    """The checkout's HEAD commit (None outside a git checkout)."""
    out = _git("rev-parse", "HEAD")
    return out.strip() if out else None


def dirty() -> bool | None:
    """Whether tracked files differ from HEAD (untracked files do not count); None without git."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; the platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Cores this process may use, the CPU model and the platform."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return {
        "cores": cores,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def config_hash(config: Any) -> str | None:
    """A short SHA-256 of a config: a pydantic model, a mapping, or a file's bytes (a path)."""
    if config is None:
        return None
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if isinstance(config, str | Path) and Path(config).is_file():
        data = Path(config).read_bytes()
    else:
        data = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: the program's name and its arguments, shell-quoted."""
    args = list(sys.argv if argv is None else argv)
    if args:
        args[0] = Path(args[0]).name
    return shlex.join(args)


def provenance(
    config: Any = None, config_name: str | None = None, command: str | None = None
) -> dict[str, Any]:
    """The `provenance` block of a report.

    Args:
        config: what the run was configured with (an `ExperimentConfig`, a dict of a benchmark's
            parameters, or a config file's path); hashed into `config_hash`.
        config_name: how a reader finds that config (a YAML path or a preset's name); defaults to
            the config's `name` or the path.
        command: the command that made the report (defaults to this process's command line).
    """
    if config_name is None:
        if isinstance(config, str | Path):
            config_name = str(config)
        elif hasattr(config, "name"):
            config_name = str(config.name)
        elif isinstance(config, Mapping) and "name" in config:
            config_name = str(config["name"])
    return {
        "commit": commit(),
        "dirty": dirty(),
        "config": config_name,
        "config_hash": config_hash(config),
        "command": command or command_line(),
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def mixed_provenance(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Why reports (by where they came from) are not one comparison: a line per differing key.

    Compared keys: `commit`, `dirty` (a dirty tree is its own code) and `config_hash`. A report
    without provenance differs from one with it.
    """
    lines = []
    for key in ("commit", "dirty", "config_hash"):
        values = {where: (r.get("provenance") or {}).get(key) for where, r in reports.items()}
        if len({json.dumps(v) for v in values.values()}) > 1:
            shown = ", ".join(f"{where}: {v}" for where, v in values.items())
            lines.append(f"{key} differs ({shown})")
    return lines
