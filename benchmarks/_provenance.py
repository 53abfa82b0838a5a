"""The `provenance` block of a benchmark's JSON: `mlops.provenance.provenance` over its parameters.

Every benchmark script calls `bench_provenance(name, args)` with its parsed (and resolved) argparse
arguments: `config_hash` is the hash of those parameters, `config` the benchmark's name, `params`
the parameters themselves, and `command` the command to rerun it from the repository root.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py`: the project's packages
    sys.path.insert(1, str(ROOT))

from mlops.provenance import provenance  # noqa: E402


def _plain(value: Any) -> Any:
    """A JSON value: paths and other objects as strings, containers element by element."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def bench_params(
    args: argparse.Namespace | Mapping[str, Any], drop: Iterable[str] = ()
) -> dict[str, Any]:
    """The benchmark's parameters as a JSON-able dict (internal arguments in `drop` left out)."""
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    skip = set(drop)
    return {k: _plain(v) for k, v in sorted(items.items()) if k not in skip}


def rerun_command(argv: list[str] | None = None) -> str:
    """`python benchmarks/x.py ARGS`: the command line with the script relative to the repo root."""
    args = list(sys.argv if argv is None else argv)
    if not args:
        return ""
    script = Path(args[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = args[0]
    return shlex.join(["python", shown, *args[1:]])


def bench_provenance(
    name: str, args: argparse.Namespace | Mapping[str, Any], drop: Iterable[str] = ()
) -> dict[str, Any]:
    """{commit, dirty, config (the name), config_hash, command, machine, date, params}."""
    params = bench_params(args, drop)
    block = provenance(config=params, config_name=name, command=rerun_command())
    block["params"] = params
    return block


def commit_label(block: Mapping[str, Any]) -> str:
    """The block's commit as a top-level `commit` value: `sha`, `sha-dirty`, or "unknown"."""
    sha = block.get("commit")
    if not sha:
        return "unknown"
    return str(sha) + ("-dirty" if block.get("dirty") else "")
