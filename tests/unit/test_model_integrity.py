"""Model files are checked against the sha256 and size recorded at save, before any parser reads them.

The fault this guards against: a `lightgbm.txt` cut in half makes `lgb.Booster(model_file=...)`
segfault or abort the whole process (a C++ parser), so a corrupt artifact must be refused by
`load_model` in Python, naming the file, before LightGBM ever opens it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops import models as M
from mlops.models import (
    LightGBMDemand,
    LogisticDemand,
    ModelIntegrityError,
    load_model,
    save_model,
    verify_model_dir,
)
from pricing import features as F
from pricing import schema as S
from scorer.testing import toy_catalog


def _feature_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    feats = pd.DataFrame(rng.normal(size=(n, len(F.FEATURES))), columns=list(F.FEATURES))
    feats[S.CATEGORY] = [f"c{k % 5}" for k in range(n)]
    return feats


def small_lightgbm(seed: int = 0) -> LightGBMDemand:
    """A LightGBM demand model fit in well under a second (enough trees to make a real file)."""
    import lightgbm as lgb

    m = LightGBMDemand({"n_estimators": 30, "num_threads": 1}, seed=seed)
    m.set_catalog(toy_catalog(20))
    m.categories = sorted(m.catalog[S.CATEGORY].astype(str).unique().tolist())
    feats = _feature_frame(600, seed)
    y = (feats["log_price_ratio"] < 0).to_numpy(float)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "seed": seed}
    m.booster = lgb.train(params, lgb.Dataset(m._frame(feats), y), 30)
    return m


def small_logistic() -> LogisticDemand:
    m = LogisticDemand(l2=0.5)
    m.set_catalog(toy_catalog(20))
    k = len(F.FEATURES) + len(F.USER_FEATURES)
    rng = np.random.default_rng(1)
    m.w, m.mean, m.std = rng.normal(size=k + 1), rng.normal(size=k), np.ones(k)
    return m


@pytest.fixture
def lgb_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    save_model(small_lightgbm(), path)
    return path


def _forbid_lightgbm_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightgbm as lgb

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("lgb.Booster was called on a file that failed its integrity check")

    monkeypatch.setattr(lgb, "Booster", refuse)


def _truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- the manifest ---------------------------------------------------------------------------------


def test_save_records_sha256_and_size_of_every_file(lgb_dir: Path) -> None:
    manifest = json.loads((lgb_dir / M.MANIFEST).read_text())
    assert manifest["model"] == "lightgbm" and manifest["format"] == M.MANIFEST_FORMAT
    assert manifest["class"] == "mlops.models:LightGBMDemand"
    files = manifest["files"]
    assert set(files) == {"lightgbm.txt", "lightgbm.json", "catalog.parquet"}
    for name, entry in files.items():
        data = (lgb_dir / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert not list(lgb_dir.glob(f".{M.MANIFEST}.*")), "the temp manifest was renamed away"


def test_lightgbm_round_trip_still_loads_and_predicts(lgb_dir: Path) -> None:
    original = small_lightgbm()
    loaded = load_model(lgb_dir)
    assert isinstance(loaded, LightGBMDemand)
    feats = _feature_frame(50, seed=3)
    np.testing.assert_allclose(
        loaded.booster.predict(loaded._frame(feats)),
        original.booster.predict(original._frame(feats)),
    )
    pd.testing.assert_frame_equal(loaded.catalog, original.catalog)


def test_logistic_round_trip_is_verified_too(tmp_path: Path) -> None:
    m = small_logistic()
    save_model(m, tmp_path / "m")
    assert set(verify_model_dir(tmp_path / "m")["files"]) == {"logistic.npz", "catalog.parquet"}
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, LogisticDemand)
    np.testing.assert_array_equal(loaded.w, m.w)
    # a corrupt npz is refused before numpy reads it
    (tmp_path / "m" / "logistic.npz").write_bytes(b"PK\x03\x04 not a zip any more")
    with pytest.raises(ModelIntegrityError, match="logistic.npz"):
        load_model(tmp_path / "m")


# --- the fault: a truncated lightgbm.txt ------------------------------------------------------------


def test_truncated_lightgbm_file_is_refused_before_lightgbm_parses_it(
    lgb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _truncate_half(lgb_dir / "lightgbm.txt")
    _forbid_lightgbm_parser(monkeypatch)
    with pytest.raises(ModelIntegrityError) as info:
        load_model(lgb_dir)
    err = info.value
    assert err.file == "lightgbm.txt" and err.path == lgb_dir
    assert "lightgbm.txt" in str(err) and "truncated" in str(err)


def test_same_size_corruption_is_caught_by_the_hash(
    lgb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = lgb_dir / "lightgbm.txt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    _forbid_lightgbm_parser(monkeypatch)
    with pytest.raises(ModelIntegrityError, match=r"lightgbm\.txt.*sha256"):
        load_model(lgb_dir)


def test_missing_file_is_named(lgb_dir: Path) -> None:
    (lgb_dir / "catalog.parquet").unlink()
    with pytest.raises(ModelIntegrityError, match=r"catalog\.parquet.*missing"):
        load_model(lgb_dir)


def test_missing_or_unreadable_manifest_is_refused(lgb_dir: Path) -> None:
    manifest = lgb_dir / M.MANIFEST
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(ModelIntegrityError, match=r"manifest\.json.*unreadable"):
        load_model(lgb_dir)
    manifest.unlink()
    with pytest.raises(ModelIntegrityError, match=r"manifest\.json.*missing"):
        load_model(lgb_dir)


def test_manifest_cannot_point_outside_the_model_dir(lgb_dir: Path) -> None:
    manifest = json.loads((lgb_dir / M.MANIFEST).read_text())
    manifest["files"]["../outside.txt"] = {"sha256": "0" * 64, "size": 1}
    (lgb_dir / M.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="unsafe file name"):
        verify_model_dir(lgb_dir)


def test_saving_again_replaces_the_manifest(lgb_dir: Path) -> None:
    save_model(small_lightgbm(seed=5), lgb_dir)
    assert isinstance(load_model(lgb_dir), LightGBMDemand)


# --- manifests written before hashes were recorded ---------------------------------------------------


def test_manifest_without_hashes_is_refused_unless_explicitly_allowed(
    lgb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(M.ALLOW_UNVERIFIED_ENV, raising=False)
    (lgb_dir / M.MANIFEST).write_text(json.dumps({"model": "lightgbm"}))  # the old format
    with pytest.raises(ModelIntegrityError, match=M.ALLOW_UNVERIFIED_ENV):
        load_model(lgb_dir)
    assert isinstance(load_model(lgb_dir, allow_unverified=True), LightGBMDemand)
    monkeypatch.setenv(M.ALLOW_UNVERIFIED_ENV, "1")
    assert isinstance(load_model(lgb_dir), LightGBMDemand)
    # the explicit argument wins over the environment
    with pytest.raises(ModelIntegrityError):
        load_model(lgb_dir, allow_unverified=False)


def test_the_manifest_chooses_the_class_and_older_manifests_use_the_name(lgb_dir: Path) -> None:
    manifest = json.loads((lgb_dir / M.MANIFEST).read_text())
    del manifest["class"]  # format 2: the name only
    (lgb_dir / M.MANIFEST).write_text(json.dumps(manifest))
    assert isinstance(load_model(lgb_dir), LightGBMDemand)


@pytest.mark.parametrize("path", ["os:system", "mlops.models:save_model", "nowhere:Thing"])
def test_a_manifest_cannot_make_the_loader_import_anything_else(lgb_dir: Path, path: str) -> None:
    manifest = json.loads((lgb_dir / M.MANIFEST).read_text())
    manifest["class"] = path
    (lgb_dir / M.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="unknown model class"):
        load_model(lgb_dir)


def test_every_registered_class_path_imports_a_demand_model_of_that_name() -> None:
    for name, path in M.CLASS_PATHS.items():
        cls = M.import_class(path)
        assert cls.name == name and M.class_path(cls) == path


def test_integrity_error_survives_pickling() -> None:
    """Prefect and DDP may carry exceptions across processes: the error must round-trip."""
    err = pickle.loads(pickle.dumps(ModelIntegrityError(Path("/m"), "lightgbm.txt", "missing")))
    assert isinstance(err, ModelIntegrityError)
    assert err.file == "lightgbm.txt" and "lightgbm.txt" in str(err)
    from mlops.registry import ModelLoadError

    wrapped = pickle.loads(pickle.dumps(ModelLoadError("price-response", "2", err)))
    assert wrapped.version == "2" and "ModelIntegrityError" in str(wrapped)
