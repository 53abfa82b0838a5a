"""Where a result came from (`mlops.provenance`), and `compare-merge` refusing runs of different code
or config unless told to pool them."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from test_compare_join import _m, _write

from flows.compare import merge_compare
from mlops.config import ExperimentConfig
from mlops.provenance import command_line, config_hash, mixed_provenance, provenance

CONFIG = "configs/default.yaml"
KEYS = {"commit", "dirty", "config", "config_hash", "command", "machine", "date"}


def test_provenance_has_every_key() -> None:
    cfg = ExperimentConfig(name="unit")
    p = provenance(cfg)
    assert set(p) >= KEYS
    assert re.fullmatch(r"[0-9a-f]{40}", p["commit"])  # the tests run in a git checkout
    assert isinstance(p["dirty"], bool)
    assert p["config"] == "unit"  # the config's name when no path is given
    assert p["config_hash"] == config_hash(cfg)
    assert p["command"] == command_line()
    assert isinstance(p["machine"]["cores"], int) and p["machine"]["cores"] >= 1
    assert isinstance(p["machine"]["cpu_model"], str) and p["machine"]["cpu_model"]
    assert datetime.fromisoformat(p["date"]).tzinfo is not None
    json.dumps(p)  # it goes into JSON reports as is


def test_provenance_names_and_commands() -> None:
    p = provenance({"name": "bench", "rows": 10}, command="pricing compare --seeds 0")
    assert p["config"] == "bench" and p["command"] == "pricing compare --seeds 0"
    bare = provenance(None)
    assert bare["config"] is None and bare["config_hash"] is None
    named = provenance(ExperimentConfig(), config_name="configs/x.yaml")
    assert named["config"] == "configs/x.yaml"
    assert command_line(["/usr/bin/pricing", "compare", "--out", "a b"]) == (
        "pricing compare --out 'a b'"
    )


def test_config_hash_is_stable_for_equal_configs_and_differs_otherwise(tmp_path: Path) -> None:
    a = {"model": "bert", "seed": 0, "nested": {"x": 1, "y": [1, 2]}}
    b = {"nested": {"y": [1, 2], "x": 1}, "seed": 0, "model": "bert"}  # same, other key order
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "seed": 1})
    assert config_hash(a) != config_hash({**a, "nested": {"x": 1, "y": [2, 1]}})
    assert re.fullmatch(r"[0-9a-f]{16}", config_hash(a) or "")
    assert config_hash(None) is None

    c1, c2 = ExperimentConfig(), ExperimentConfig()
    assert config_hash(c1) == config_hash(c2)
    assert config_hash(c1) == config_hash(c1.model_dump(mode="json"))
    assert config_hash(c1) != config_hash(c1.model_copy(update={"seed": 1}))
    assert config_hash(c1) != config_hash(ExperimentConfig(model="logistic"))

    f1, f2 = tmp_path / "a.yaml", tmp_path / "b.yaml"
    f1.write_text("model: bert\n")
    f2.write_text("model: lightgbm\n")
    assert config_hash(f1) == config_hash(str(f1))
    assert config_hash(f1) != config_hash(f2)


def _prov(commit: str = "a" * 40, config_hash: str = "h1", dirty: bool = False) -> dict:
    return {"commit": commit, "dirty": dirty, "config_hash": config_hash, "command": "x"}


def test_mixed_provenance() -> None:
    same = {"run1": {"provenance": _prov()}, "run2": {"provenance": {**_prov(), "command": "y"}}}
    assert mixed_provenance(same) == []  # the command and machine may differ
    commit = mixed_provenance(
        {"run1": {"provenance": _prov()}, "run2": {"provenance": _prov(commit="b" * 40)}}
    )
    assert len(commit) == 1 and commit[0].startswith("commit differs")
    assert "run1" in commit[0] and "run2" in commit[0] and "b" * 40 in commit[0]
    cfg = mixed_provenance(
        {"run1": {"provenance": _prov()}, "run2": {"provenance": _prov(config_hash="h2")}}
    )
    assert len(cfg) == 1 and cfg[0].startswith("config_hash differs") and "h2" in cfg[0]
    dirty = mixed_provenance(
        {"run1": {"provenance": _prov()}, "run2": {"provenance": _prov(dirty=True)}}
    )
    assert [line.split()[0] for line in dirty] == ["dirty"]
    both = mixed_provenance(
        {"a": {"provenance": _prov()}, "b": {"provenance": _prov("c" * 40, "h3")}}
    )
    assert [line.split()[0] for line in both] == ["commit", "config_hash"]
    # a report without provenance differs from one with it
    missing = mixed_provenance({"a": {"provenance": _prov()}, "b": {}})
    assert {line.split()[0] for line in missing} == {"commit", "dirty", "config_hash"}
    assert mixed_provenance({"a": {}, "b": {}}) == []
    assert mixed_provenance({"only": {"provenance": _prov()}}) == []


# --- compare-merge ----------------------------------------------------------------------------------

MODELS = ("bert_wide", "lightgbm", "logistic")


def _run(folder: Path, seeds: list[int], prov: dict | None) -> Path:
    """A compare run's seed reports (`test_compare_join`'s), each carrying `prov`."""
    for seed in seeds:
        _write(folder, seed, "bert_wide", {n: _m(n, seed) for n in MODELS})
        if prov is not None:
            f = folder / f"seed-{seed}.json"
            report = json.loads(f.read_text())
            report["provenance"] = prov
            f.write_text(json.dumps(report))
    return folder


def test_merge_refuses_runs_of_different_commits_and_pools_them_when_allowed(
    tmp_path: Path,
) -> None:
    a = _run(tmp_path / "a", [0, 1], _prov("a" * 40))
    b = _run(tmp_path / "b", [2], _prov("b" * 40))
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match="commit differs") as err:
        merge_compare([str(a), str(b)], str(out), CONFIG)
    assert "a" * 40 in str(err.value) and "b" * 40 in str(err.value)
    assert "config_hash" not in str(err.value)  # only what differs is named
    assert not (out / "compare.json").exists()

    result = merge_compare([str(a), str(b)], str(out), CONFIG, allow_mixed=True)
    assert result["seeds"] == [0, 1, 2]
    report = json.loads((out / "compare.json").read_text())
    prov = report["provenance"]
    assert prov["mixed"] is True
    assert prov["merged"] == {str(a): _prov("a" * 40), str(b): _prov("b" * 40)}
    assert {"commit", "config_hash", "machine", "date"} <= set(prov)  # the merge's own


def test_merge_refuses_different_configs(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", [0, 1], _prov())
    b = _run(tmp_path / "b", [2], _prov(config_hash="other"))
    with pytest.raises(ValueError, match="config_hash differs"):
        merge_compare([str(a), str(b)], str(tmp_path / "out"), CONFIG)


def test_runs_of_the_same_provenance_merge_unmixed_and_compare_json_is_read_first(
    tmp_path: Path,
) -> None:
    # Run a's provenance is in its compare.json only, run b's in its seed reports: the same.
    a = _run(tmp_path / "a", [0, 1], None)
    (a / "compare.json").write_text(json.dumps({"provenance": _prov()}))
    b = _run(tmp_path / "b", [2], _prov())
    out = tmp_path / "merged"
    merge_compare([str(a), str(b)], str(out), CONFIG)
    prov = json.loads((out / "compare.json").read_text())["provenance"]
    assert prov["mixed"] is False
    assert prov["merged"] == {str(a): _prov(), str(b): _prov()}
    # compare.json wins over the seed reports
    (b / "compare.json").write_text(json.dumps({"provenance": _prov(commit="f" * 40)}))
    with pytest.raises(ValueError, match="commit differs"):
        merge_compare([str(a), str(b)], str(tmp_path / "out2"), CONFIG)
