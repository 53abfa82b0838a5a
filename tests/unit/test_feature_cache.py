"""The feature cache (issue 9.4): keyed on data and feature code, written atomically, self-healing."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from pricing import features as F
from pricing.simulator import Market
from tasks import features as T


@pytest.fixture()
def tables(tiny_market: Market) -> dict[str, pd.DataFrame]:
    return tiny_market.tables


def _cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("features-*.parquet"))


def test_same_data_and_code_hits_the_cache(tables: dict, tmp_path: Path) -> None:
    first = T.build_offer_features(tables, tmp_path)
    second = T.build_offer_features(tables, tmp_path)
    assert not first.cache_hit and second.cache_hit
    assert first.key == second.key and first.data_hash == second.data_hash
    pd.testing.assert_frame_equal(first.features, second.features)


def test_a_change_to_the_feature_function_misses_the_cache(
    tables: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = T.build_offer_features(tables, tmp_path)
    original = F.offer_features

    def fixed_offer_features(*args: object, **kwargs: object) -> pd.DataFrame:
        out = original(*args, **kwargs)  # type: ignore[arg-type]
        out["fixed"] = 1.0  # the "fix"
        return out

    monkeypatch.setattr(F, "offer_features", fixed_offer_features)
    new = T.build_offer_features(tables, tmp_path)
    assert not new.cache_hit and new.key != old.key
    assert "fixed" in new.features.columns  # not the stale Parquet
    assert new.data_hash == old.data_hash  # same data, new code
    assert len(_cache_files(tmp_path)) == 2


def test_a_change_to_the_features_module_source_misses_the_cache(
    tables: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = T.build_offer_features(tables, tmp_path)
    read = T._module_source

    def edited(module: object) -> bytes:
        src = read(module)  # type: ignore[arg-type]
        return src + b"\n# a fix somewhere in the module\n" if module is F else src

    monkeypatch.setattr(T, "_module_source", edited)
    new = T.build_offer_features(tables, tmp_path)
    assert not new.cache_hit and new.key != old.key


def test_a_truncated_cache_file_is_a_miss_and_is_rewritten(tables: dict, tmp_path: Path) -> None:
    first = T.build_offer_features(tables, tmp_path)
    (path,) = _cache_files(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # a write cut in half
    again = T.build_offer_features(tables, tmp_path)  # must not raise
    assert not again.cache_hit and again.key == first.key
    pd.testing.assert_frame_equal(again.features, first.features)
    pd.testing.assert_frame_equal(pd.read_parquet(path), first.features)  # healed on disk
    assert T.build_offer_features(tables, tmp_path).cache_hit


def test_cache_writes_go_through_a_temp_file_and_os_replace(
    tables: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []
    replaced: list[tuple[Path, Path]] = []
    to_parquet, replace = pd.DataFrame.to_parquet, os.replace

    def spy_to_parquet(self: pd.DataFrame, path: object, *a: object, **kw: object) -> object:
        written.append(Path(str(path)))
        return to_parquet(self, path, *a, **kw)  # type: ignore[arg-type]

    def spy_replace(src: object, dst: object) -> None:
        replaced.append((Path(str(src)), Path(str(dst))))
        replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(pd.DataFrame, "to_parquet", spy_to_parquet)
    monkeypatch.setattr(os, "replace", spy_replace)  # the one module object every writer uses
    T.build_offer_features(tables, tmp_path)
    (final,) = _cache_files(tmp_path)
    assert final not in written  # never written in place
    assert replaced == [(written[0], final)]
    assert written[0].parent == final.parent  # same filesystem: the rename is atomic
    assert not written[0].exists()  # no temp file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
