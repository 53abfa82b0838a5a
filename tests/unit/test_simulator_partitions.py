"""A market written bucket by bucket: partitioned tables, unique ids, one truth that loads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expectations import validate_data_dir
from flows.cli import main
from pricing import schema as S
from pricing.io import read_part, read_table, read_tables, table_parts
from pricing.simulator import (
    GROUND_TRUTH_DIR,
    GroundTruth,
    SimConfig,
    WrittenMarket,
    bucket_sizes,
    load_ground_truth,
    simulate,
    write_market,
    write_market_partitioned,
)
from pricing.split import time_split

CONFIG = SimConfig(n_users=300, n_items=60, n_days=21, seed=5)
PARTS = 3


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> WrittenMarket:
    return write_market_partitioned(CONFIG, tmp_path_factory.mktemp("parts") / "m", PARTS)


@pytest.fixture(scope="module")
def data_dir(written: WrittenMarket) -> Path:
    return written.paths[S.ITEMS].parent


@pytest.fixture(scope="module")
def parts(data_dir: Path) -> dict[str, list[pd.DataFrame]]:
    """Each partitioned table's partitions, in order."""
    return {
        table: [read_part(path, table) for path in table_parts(data_dir / table)]
        for table in (S.EVENTS, S.OFFERS, S.USERS)
    }


@pytest.fixture(scope="module")
def truth(data_dir: Path) -> GroundTruth:
    loaded = load_ground_truth(data_dir)
    assert loaded is not None
    return loaded


def test_partition_files_exist_and_read_back_as_one_table(
    written: WrittenMarket, data_dir: Path, parts: dict[str, list[pd.DataFrame]]
) -> None:
    assert (data_dir / "items.parquet").is_file()
    names = [f"part-{b:05d}.parquet" for b in range(PARTS)]
    for table, frames in parts.items():
        assert sorted(p.name for p in (data_dir / table).iterdir()) == names
        whole = read_table(data_dir, table)
        assert whole is not None
        assert len(whole) == sum(len(f) for f in frames) == written.rows[table] > 0
        pd.testing.assert_frame_equal(whole, pd.concat(frames, ignore_index=True))
    assert written.rows[S.ITEMS] == CONFIG.n_items and written.rows[S.USERS] == CONFIG.n_users
    # Users split into buckets of about n_users / P; the catalog is simulate's, written once.
    assert [len(f) for f in parts[S.USERS]] == bucket_sizes(CONFIG.n_users, PARTS).tolist()
    items = read_table(data_dir, S.ITEMS)
    pd.testing.assert_frame_equal(items, simulate(CONFIG).tables[S.ITEMS])
    truth_dir = data_dir / GROUND_TRUTH_DIR
    assert {p.name for p in truth_dir.iterdir()} == {
        "arrays.npz", "meta.json", "users", "user_traits",
    }  # fmt: skip
    assert len(list((truth_dir / "users").glob("part-*.npz"))) == PARTS
    assert json.loads((truth_dir / "meta.json").read_text())["partitions"] == PARTS
    traits = pd.read_parquet(truth_dir / "user_traits")
    assert len(traits) == CONFIG.n_users


def test_ids_are_unique_across_partitions(parts: dict[str, list[pd.DataFrame]]) -> None:
    for table, column in ((S.EVENTS, S.EVENT_ID), (S.OFFERS, S.OFFER_ID), (S.USERS, S.USER_ID)):
        ids = pd.concat([f[column] for f in parts[table]], ignore_index=True)
        assert ids.is_unique, table
        assert ids.str.len().nunique() == 1, table  # one width: text order = number order
    sessions = [set(f[S.SESSION_ID]) for f in parts[S.EVENTS]]
    for b in range(PARTS):
        for c in range(b + 1, PARTS):
            assert sessions[b].isdisjoint(sessions[c])
    events = pd.concat(parts[S.EVENTS], ignore_index=True)
    assert (events.groupby(S.SESSION_ID)[S.USER_ID].nunique() == 1).all()


def test_each_users_events_and_offers_are_in_their_partition(
    parts: dict[str, list[pd.DataFrame]],
) -> None:
    for b in range(PARTS):
        users = set(parts[S.USERS][b][S.USER_ID])
        for table in (S.EVENTS, S.OFFERS):
            assert set(parts[table][b][S.USER_ID]) <= users, (table, b)
            assert len(parts[table][b]) > 0


def test_same_seed_and_partitions_same_market(
    data_dir: Path, truth: GroundTruth, tmp_path: Path
) -> None:
    write_market_partitioned(CONFIG, tmp_path / "again", PARTS)
    for table in S.TABLES:
        pd.testing.assert_frame_equal(
            read_table(data_dir, table), read_table(tmp_path / "again", table)
        )
    again = load_ground_truth(tmp_path / "again")
    assert again is not None
    for name in GroundTruth._ARRAYS:
        np.testing.assert_array_equal(getattr(truth, name), getattr(again, name), err_msg=name)
    write_market_partitioned(dataclasses.replace(CONFIG, seed=6), tmp_path / "other", PARTS)
    other = read_table(tmp_path / "other", S.OFFERS)
    assert not other[S.PRICE].equals(read_table(data_dir, S.OFFERS)[S.PRICE])


def test_the_ground_truth_loads_as_one_and_prices_every_buckets_users(
    data_dir: Path, truth: GroundTruth, parts: dict[str, list[pd.DataFrame]]
) -> None:
    users = read_table(data_dir, S.USERS)
    np.testing.assert_array_equal(truth.user_ids, users[S.USER_ID].to_numpy(dtype=str))
    assert truth.user_taste.shape == (CONFIG.n_users, len(truth.categories))
    assert len(truth.item_ids) == CONFIG.n_items
    for b, offers in enumerate(parts[S.OFFERS]):
        p = truth.purchase_probability(offers[S.USER_ID], offers[S.ITEM_ID], offers[S.PRICE])
        assert p.shape == (len(offers),) and np.all((p > 0) & (p < 1)), b
        # The logged outcomes follow the truth in every bucket (a loose calibration check).
        assert abs(p.mean() - offers[S.PURCHASED].mean()) < 0.03, b
    traits = truth.user_traits()
    assert len(traits) == CONFIG.n_users and traits["new_user"].any()


def test_novelty_is_decided_once_for_the_whole_market(data_dir: Path, truth: GroundTruth) -> None:
    """One novelty start, after the split's boundary; cold items and held-out phrasings wait for
    it in every bucket; new users first shop at their arrival."""
    offers = read_table(data_dir, S.OFFERS)
    events = read_table(data_dir, S.EVENTS)
    novelty = pd.Timestamp(truth.novelty_start)
    test_start = time_split(offers, test_fraction=1.0 - CONFIG.test_start_fraction).test_start
    assert test_start <= novelty
    start = pd.Timestamp(CONFIG.start, tz="UTC")
    arrival = pd.Series(truth.item_arrival_ms, index=truth.item_ids)[offers[S.ITEM_ID]]
    offered_at = (offers[S.TS] - start).dt.total_seconds().to_numpy() * 1000
    assert (offered_at >= arrival.to_numpy()).all()
    assert len(truth.cold_item_ids) == round(CONFIG.cold_item_share * CONFIG.n_items)
    new = set(truth.new_user_ids)
    assert offers.loc[offers[S.USER_ID].isin(new), S.TS].min() >= novelty
    searches = events[events[S.EVENT_TYPE] == S.SEARCH]
    held = searches[S.QUERY].isin(set(truth.heldout_queries))
    assert held.any() and (searches.loc[held, S.TS] >= novelty).all()


def test_a_bucket_looks_like_a_market_of_its_size(parts: dict[str, list[pd.DataFrame]]) -> None:
    """Offers per user and the purchase rate of each bucket fall within the spread of markets of
    n_users / P users (several seeds: one small market alone is noisy)."""
    stats = []
    for seed in range(6):
        small = simulate(dataclasses.replace(CONFIG, n_users=CONFIG.n_users // PARTS, seed=seed))
        offers = small.tables[S.OFFERS]
        stats.append((len(offers) / small.truth.user_ids.size, offers[S.PURCHASED].mean()))
    mean, sd = np.mean(stats, axis=0), np.std(stats, axis=0, ddof=1)
    for b in range(PARTS):
        offers = parts[S.OFFERS][b]
        bucket = (len(offers) / len(parts[S.USERS][b]), offers[S.PURCHASED].mean())
        assert np.all(np.abs(np.array(bucket) - mean) < 4 * sd), (b, bucket, mean, sd)


def test_a_partitioned_market_passes_validation(data_dir: Path, tmp_path: Path) -> None:
    tables = read_tables(data_dir)
    assert set(tables) == set(S.TABLES)
    report = validate_data_dir(data_dir, build_docs=False, quarantine_dir=tmp_path / "q")
    assert report.passed, report.summary_text()
    assert all(t.bad_rows == 0 for t in report.tables.values())


def test_rewriting_a_folder_leaves_no_old_file_mixed_in(tmp_path: Path) -> None:
    small = dataclasses.replace(CONFIG, n_users=60, n_days=7)
    write_market(simulate(small), tmp_path)  # single files first: they would shadow the parts
    write_market_partitioned(small, tmp_path, 4)
    written = write_market_partitioned(small, tmp_path, 2)
    for table in (S.EVENTS, S.OFFERS, S.USERS):
        assert not (tmp_path / f"{table}.parquet").exists()
        assert len(table_parts(tmp_path / table)) == 2
        assert len(read_table(tmp_path, table)) == written.rows[table]
    truth = load_ground_truth(tmp_path)
    assert truth is not None and len(truth.user_ids) == small.n_users
    assert not (tmp_path / GROUND_TRUTH_DIR / "user_traits.parquet").exists()


def test_an_incomplete_ground_truth_is_refused(tmp_path: Path) -> None:
    small = dataclasses.replace(CONFIG, n_users=40, n_days=7)
    write_market_partitioned(small, tmp_path, 2)
    (tmp_path / GROUND_TRUTH_DIR / "users" / "part-00001.npz").unlink()
    with pytest.raises(ValueError, match="1 user part"):
        load_ground_truth(tmp_path)


def test_partitions_must_fit_the_users(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="partitions"):
        write_market_partitioned(dataclasses.replace(CONFIG, n_users=3), tmp_path, 4)
    with pytest.raises(ValueError, match="Parquet"):
        write_market_partitioned(CONFIG, tmp_path, 2, fmt="csv")


def test_cli_simulate_writes_partitions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = ["--users", "90", "--items", "30", "--days", "7", "--seed", "3"]
    assert main(["simulate", "--out", str(tmp_path / "p"), *size, "--partitions", "3"]) == 0
    out = capsys.readouterr().out
    offers = read_table(tmp_path / "p", S.OFFERS)
    assert f"'offers': {len(offers)}" in out and "in 3 partitions" in out
    assert len(table_parts(tmp_path / "p" / S.OFFERS)) == 3
    truth = load_ground_truth(tmp_path / "p")
    assert truth is not None and len(truth.user_ids) == 90
    # The default is one piece: single files, as before.
    assert main(["simulate", "--out", str(tmp_path / "one"), *size]) == 0
    assert (tmp_path / "one" / "offers.parquet").is_file()
    assert main(["simulate", "--out", str(tmp_path / "x"), *size, "--partitions", "0"]) == 2
    bad = ["--partitions", "2", "--format", "csv"]
    assert main(["simulate", "--out", str(tmp_path / "x"), *size, *bad]) == 2


def test_a_classic_market_writes_in_parts_too(tmp_path: Path) -> None:
    """No needs and no novelty: empty need arrays concatenate, and nothing arrives late."""
    classic = SimConfig.preset("classic", n_users=60, n_items=20, n_days=7, seed=2)
    write_market_partitioned(classic, tmp_path, 3)
    truth = load_ground_truth(tmp_path)
    assert truth is not None and truth.needs == () and truth.novelty_start is None
    assert truth.user_intent.shape == (60, 0) and not truth.user_arrival_ms.any()
    offers = read_table(tmp_path, S.OFFERS)
    p = truth.purchase_probability(offers[S.USER_ID], offers[S.ITEM_ID], offers[S.PRICE])
    assert len(p) == len(offers) and offers[S.USER_ID].nunique() > 40
