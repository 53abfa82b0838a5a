"""`--engine dask`: the same answers as the local engine, bad partitions named, and a flow on
prefect-dask's DaskTaskRunner, on a 2-process LocalCluster."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expectations import validate_data_dir
from mlops.config import SplitConfig
from pricing import features as F
from pricing import io as pio
from pricing import schema as S
from pricing.io import ContractError
from pricing.policy import Guardrails
from pricing.simulator import Market, SimConfig, load_ground_truth, simulate, write_market
from tasks import partitioned as P
from tasks.evaluation import evaluate_models, split_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from mlops import engine

    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED",
            "MALLOC_TRIM_THRESHOLD_", "__DASK_PARENT_PID")  # fmt: skip
    before = {k: os.environ.get(k) for k in keys}
    with engine.cluster(2) as address:
        # the workers' thread limits and hash seed stay theirs: LightGBM and the processes this
        # one starts later keep this process's settings
        assert {k: os.environ.get(k) for k in keys} == before
        yield address


def write_partitioned(market: Market, out: Path, parts: int) -> Path:
    """The market with events and offers cut by rows (not by user) into `parts` files each."""
    write_market(market, out)
    for table in P.USER_TABLES:
        df = market.tables[table]
        (out / f"{table}.parquet").unlink()
        for i, rows in enumerate(np.array_split(np.arange(len(df)), parts)):
            pio.write_part(df.iloc[rows], out, table, i)
    return out


def _part(data_dir: Path, table: str, index: int) -> Path:
    return data_dir / table / pio.part_name(index)


def _edit(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    fn(pd.read_parquet(path)).to_parquet(path, index=False)


@pytest.fixture(scope="module")
def default_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default simulated market in 4 row partitions, with a few bad rows: an offer id repeated
    in a later partition, an event on an item the catalog lacks, an unparseable price."""
    out = write_partitioned(simulate(SimConfig()), tmp_path_factory.mktemp("default"), 4)
    first = pd.read_parquet(_part(out, S.OFFERS, 0)).iloc[[5]]
    _edit(_part(out, S.OFFERS, 2), lambda df: pd.concat([df, first], ignore_index=True))
    _edit(
        _part(out, S.EVENTS, 1),
        lambda df: df.assign(**{S.ITEM_ID: df[S.ITEM_ID].mask(df.index == 3, "no-such-item")}),
    )
    _edit(
        _part(out, S.OFFERS, 3),
        lambda df: df.assign(**{S.PRICE: df[S.PRICE].astype(str).mask(df.index == 7, "abc")}),
    )
    return out


def _counts(report) -> dict:  # type: ignore[no-untyped-def]
    return {
        t: (
            r.rows,
            r.bad_rows,
            [(e["expectation"], e["column"], e["failed"]) for e in r.expectations],
        )
        for t, r in report.tables.items()
    }


def test_dask_gives_the_local_validation_counts_features_and_metrics(
    default_market: Path, cluster: str, tmp_path: Path
) -> None:
    from mlops.models import LightGBMDemand, LogisticDemand

    local = validate_data_dir(default_market, build_docs=False)
    feats = F.offer_features(
        local.clean_tables[S.OFFERS], local.clean_tables[S.EVENTS], local.clean_tables[S.ITEMS]
    )
    split, train, valid, test = split_data(local.clean_tables, feats, SplitConfig())

    data = P.validate_partitioned(
        default_market, P.Layout(tmp_path / "work", 3), 0.01, build_docs=False
    )
    assert _counts(data.report) == _counts(local)
    assert data.report.passed and local.passed
    assert {t: r.bad_rows for t, r in local.tables.items()} == {
        S.ITEMS: 0,
        S.EVENTS: 1,
        S.OFFERS: 2,
        S.USERS: 0,
    }
    stats = P.features_partitioned(data, SplitConfig())
    assert stats.summary() == split.summary()
    d_train, d_valid, sample = P.training_sample(data, stats, None)
    assert sample["share"] == 1.0
    pd.testing.assert_frame_equal(d_train.offers, train.offers, check_dtype=False)
    pd.testing.assert_frame_equal(d_valid.offers, valid.offers, check_dtype=False)
    gap = (d_train.features[list(F.FEATURES)] - train.features[list(F.FEATURES)]).abs().to_numpy()
    assert gap.max() <= 1e-9
    assert (d_train.features[S.CATEGORY] == train.features[S.CATEGORY]).all()
    assert stats.base_rate == pytest.approx(float(train.offers[S.PURCHASED].mean()), abs=1e-12)

    # the same models scored on the seeded evaluation sample of each engine
    models = {"logistic": LogisticDemand(), "lightgbm": LightGBMDemand({"n_estimators": 60})}
    for m in models.values():
        m.fit(train, valid)
    truth = load_ground_truth(default_market)
    k = 3000
    assert len(test) > k  # the sample is drawn, not the whole test set
    d_test, d_items = P.evaluation_sample(data, stats, k, seed=0)
    assert len(d_test) == k
    guardrails = Guardrails()
    rate = float(train.offers[S.PURCHASED].mean())
    want, _ = evaluate_models(
        models,
        test,
        truth,
        guardrails,
        rate,
        k,
        0,
        train_items=set(train.offers[S.ITEM_ID].astype(str)),
    )
    got, _ = evaluate_models(
        models, d_test, truth, guardrails, stats.base_rate, k, 0, train_items=d_items
    )
    assert set(got) == set(want)
    for name in want:
        assert set(got[name]) == set(want[name])
        for metric, value in want[name].items():
            assert got[name][metric] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), (
                name,
                metric,
            )


@pytest.fixture()
def tiny_parts(tiny_market: Market, tmp_path: Path) -> Path:
    return write_partitioned(tiny_market, tmp_path / "data", 3)


def _validate(data_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return P.validate_partitioned(data_dir, P.Layout(tmp_path / "work", 2), 0.05, build_docs=False)


def test_a_truncated_partition_is_named(tiny_parts: Path, cluster: str, tmp_path: Path) -> None:
    path = _part(tiny_parts, S.EVENTS, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for check in (
        lambda: _validate(tiny_parts, tmp_path),
        lambda: pio.read_table(tiny_parts, S.EVENTS),
    ):
        with pytest.raises(ContractError, match=r"events/part-00001\.parquet"):
            check()


def test_a_partition_missing_a_column_is_named(
    tiny_parts: Path, cluster: str, tmp_path: Path
) -> None:
    _edit(_part(tiny_parts, S.OFFERS, 2), lambda df: df.drop(columns=[S.PRICE]))
    for check in (
        lambda: _validate(tiny_parts, tmp_path),
        lambda: validate_data_dir(tiny_parts, build_docs=False),
    ):
        with pytest.raises(
            ContractError, match=r"offers/part-00002\.parquet lacks required column\(s\) 'price'"
        ):
            check()


def test_the_same_offer_id_in_two_partitions_is_quarantined_with_its_partition(
    tiny_parts: Path, cluster: str, tmp_path: Path
) -> None:
    copy = pd.read_parquet(_part(tiny_parts, S.OFFERS, 0)).iloc[[0, 1]]
    _edit(_part(tiny_parts, S.OFFERS, 2), lambda df: pd.concat([copy, df], ignore_index=True))
    report = _validate(tiny_parts, tmp_path).report
    assert report.tables[S.OFFERS].bad_rows == 2
    assert validate_data_dir(tiny_parts, build_docs=False).tables[S.OFFERS].bad_rows == 2
    bad = pd.read_parquet(tiny_parts / "quarantine" / S.OFFERS / "part-00002.parquet")
    assert bad[S.OFFER_ID].tolist() == copy[S.OFFER_ID].tolist()
    assert bad["row"].tolist() == [0, 1]  # rows of the partition file
    assert (bad[S.REASON] == "duplicate offer_id").all()
    assert bad["partition"].str.endswith("offers/part-00002.parquet").all()
    assert not (
        tiny_parts / "quarantine" / S.OFFERS / "part-00000.parquet"
    ).exists()  # the first copy is kept


def test_an_event_on_an_unknown_item_is_quarantined_with_its_reason(
    tiny_parts: Path, cluster: str, tmp_path: Path
) -> None:
    _edit(
        _part(tiny_parts, S.EVENTS, 0),
        lambda df: df.assign(**{S.ITEM_ID: df[S.ITEM_ID].mask(df.index == 4, "i-unknown")}),
    )
    report = _validate(tiny_parts, tmp_path).report
    assert report.tables[S.EVENTS].bad_rows == 1
    bad = pd.read_parquet(tiny_parts / "quarantine" / S.EVENTS / "part-00000.parquet")
    assert bad[S.ITEM_ID].tolist() == ["i-unknown"]
    assert "not in the catalog" in bad[S.REASON].iloc[0] or "unknown item" in bad[S.REASON].iloc[0]


def test_the_training_flow_runs_on_prefect_dasks_task_runner(
    prefect_harness: None, mlflow_store: str, tiny_parts: Path, cluster: str
) -> None:
    from flows.training import training
    from mlops import engine

    flow = training.with_options(task_runner=engine.task_runner(cluster))
    result = flow(
        data_dir=str(tiny_parts), config_path=str(CONFIGS / "lightgbm.yaml"), engine="dask"
    )
    assert result["engine"] == "dask"
    assert result["model_version"] == "1" and result["promoted"] is True
    assert set(result["metrics"]) == {"lightgbm", "logistic", "list_price", "oracle_uniform"}
    assert (
        result["metrics"]["lightgbm"]["profit_regret"]
        < result["metrics"]["list_price"]["profit_regret"]
    )
    assert result["validation"]["tables"][S.OFFERS]["rows"] == len(
        pio.read_table(tiny_parts, S.OFFERS)
    )
    assert {"validate", "features", "sample", "train", "evaluate"} <= set(result["timings_s"])
    assert not any(
        (Path(mlflow_store.removeprefix("sqlite:///")).parents[1] / "runs" / "partitions").glob("*")
    )
    shutil.rmtree(tiny_parts / "quarantine", ignore_errors=True)


def test_bert_streams_every_user_bucket_while_the_baselines_read_the_sample(
    prefect_harness: None, mlflow_store: str, tiny_parts: Path, cluster: str, tmp_path: Path
) -> None:
    import yaml

    from flows.training import training
    from mlops import engine

    config = tmp_path / "bert-stream.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "bert-stream",
                "model": "bert",
                "baselines": ["logistic"],
                "scale": {"offers_per_bucket": 1000, "train_sample_offers": 1000},
                "bert": {
                    "text_encoder": "tiny",
                    "d_model": 32,
                    "n_layers": 1,
                    "n_heads": 2,
                    "max_len": 16,
                    "batch_size": 128,
                    "max_epochs": 1,
                    "warmup_steps": 2,
                },
            }  # fmt: skip
        )
    )
    flow = training.with_options(task_runner=engine.task_runner(cluster))
    result = flow(data_dir=str(tiny_parts), config_path=str(config), engine="dask", promote=False)
    n_train = result["split"]["n_train"]
    assert result["sample"]["offers"] < n_train  # the baselines' training sample
    # one epoch over every bucket's training offers, not over the sample's
    assert result["train"]["bert"]["steps"] >= n_train / 128
    assert 0 < result["metrics"]["bert"]["auc"] < 1
