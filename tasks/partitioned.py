"""The pipeline's data steps on Dask, partition by partition (`pricing run --engine dask`).

No process holds a whole events or offers table:

1. Validation runs the contract suites on each input partition on a Dask worker, with two checks
   across partitions: a primary key seen in an earlier partition is a duplicate (found by a Dask
   groupby over the key columns), and items are checked against the whole catalog. Each worker
   writes its partition's clean rows split by user bucket (`pricing.partitions.user_bucket`), so
   every bucket holds all events and offers of its users, and its quarantined rows with the
   partition's file name. The counts add up into one report and one set of Data Docs.
2. Features are computed per bucket by the same `pricing.features.offer_features`, with item
   popularity from the (item, day) counts of all partitions summed (small: items x days).
3. Training reads whole buckets (whole users) up to `scale.train_sample_offers`; evaluation reads
   the seeded sample of test offers (`pricing.partitions.sample_rank`, the lowest ranks: a Dask
   tree reduction) and their users' events. Both are the rows the local engine would use when
   the data fit: every row carries `_pos` (its input partition and row), and sorting by it
   restores the order the local engine reads the tables in.

Work files go under `<runs_dir>/partitions/<run>/`: clean/<table>/b=NNNNN/part-MMMMM.parquet and
features/b=NNNNN.parquet. The catalog (items) and the users table stay in memory.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from expectations.runner import (
    TableReport,
    ValidationReport,
    contract_parameters,
    finish_report,
    merge_table_reports,
    validate_partition,
    write_quarantine,
)
from mlops import engine
from mlops.parts import check_parts
from pricing import features as F
from pricing import io as pio
from pricing import schema as S
from pricing.model import PricingData
from pricing.partitions import sample_rank, user_bucket
from pricing.split import split_at, split_bounds
from tasks.features import (
    FeatureBuild,
    cache_key,
    combine_table_hashes,
    data_hash_of,
    feature_code_hash,
    table_hash,
)

POS = pio.ROW_POSITION
_PART_BITS = 32
USER_TABLES = (S.EVENTS, S.OFFERS)  # the tables partitioned by user; the others stay in memory


@dataclass(frozen=True)
class Layout:
    """Where one run's partitioned work files live, and how many user buckets there are."""

    work: Path
    buckets: int

    def bucket_dir(self, table: str, bucket: int) -> Path:
        return self.work / "clean" / table / f"b={bucket:05d}"

    def features_path(self, bucket: int) -> Path:
        return self.work / "features" / f"b={bucket:05d}.parquet"


def bucket_count(data_dir: Path, offers_per_bucket: int) -> int:
    """User buckets for `data_dir`: about `offers_per_bucket` offers each (one per input partition
    when the offers are CSV, whose size is unknown without reading them)."""
    rows = engine.offer_rows(data_dir)
    if rows is None:
        path = pio.find_table_file(data_dir, S.OFFERS)
        return max(1, len(pio.table_parts(path)) if path else 1)
    return max(1, math.ceil(rows / offers_per_bucket))


def read_bucket(layout: Layout, table: str, bucket: int) -> pd.DataFrame:
    """The clean rows of `table` in user bucket `bucket`, in the local engine's order (an empty
    frame with the contract's columns when the bucket has none)."""
    df = pio.read_in_order(layout.bucket_dir(table, bucket))
    if df is None:
        return pio.empty_table(table).assign(**{POS: pd.Series(dtype="int64")})
    return df


# --- validation ---------------------------------------------------------------------------------


@dataclass
class PartOutcome:
    """What validating one input partition returns to the driver: counts, never rows."""

    table: str
    name: str
    report: TableReport
    gx_result: Any = None
    quarantined: bool = False
    columns: list[str] = field(default_factory=list)
    hash: tuple[int, int] = (0, 0)
    ts_min: pd.Timestamp | None = None
    ts_max: pd.Timestamp | None = None
    daily: pd.DataFrame | None = None  # events: their (item, day) counts


def _part_ids(arg: tuple[int, Path], table: str) -> pd.DataFrame:
    """The distinct primary-key values of one partition, with the partition's number."""
    index, path = arg
    key = S.PRIMARY_KEYS[table]
    ids = pio.read_part(path, table, columns=[key])[key].astype("str").dropna().drop_duplicates()
    return pd.DataFrame({key: ids.to_numpy(), "_part": np.int64(index)})


def taken_ids(parts: list[Path], table: str) -> pd.Series:
    """Primary-key values held by more than one partition, each with the first partition that
    holds it (index: the id): in a later partition such a row is a duplicate. Usually empty."""
    key = S.PRIMARY_KEYS[table]
    empty = pd.Series(dtype="int64", index=pd.Index([], dtype="str", name=key), name="min")
    if len(parts) < 2:
        return empty
    import dask.dataframe as dd

    meta = pd.DataFrame({key: pd.Series(dtype="str"), "_part": pd.Series(dtype="int64")})
    ids = dd.from_map(_part_ids, list(enumerate(parts)), table=table, meta=meta)
    spread = ids.groupby(key)["_part"].agg(["min", "count"], split_out=max(1, len(parts) // 16))
    with engine.client() as client:
        dups = client.compute(spread[spread["count"] > 1]).result()
    return dups["min"].astype("int64") if len(dups) else empty


def validate_part(
    index: int,
    path: Path,
    table: str,
    parameters: dict[str, Any],
    taken: pd.Series,
    layout: Layout,
    quarantine_dir: Path,
) -> PartOutcome:
    """Validate input partition `index` of `table` (on a worker); write its clean rows by user
    bucket and its quarantined rows; return its counts."""
    df = pio.read_part(path, table)
    earlier = taken.index[taken.to_numpy() < index] if len(taken) else None
    report, clean, bad, result = validate_partition(df, table, parameters, earlier)
    name = f"part-{index:05d}"
    out = PartOutcome(table, name, report, None if result is None else result.gx_result)
    if bad is not None and len(bad):
        bad = bad.assign(partition=str(path))
        out.quarantined = write_quarantine(bad, quarantine_dir / table, name) is not None
    if clean is None or not len(clean):
        return out
    keep = np.ones(len(df), dtype=bool)
    if bad is not None and len(bad):
        keep[bad.index.to_numpy()] = False
    out.columns = [str(c) for c in clean.columns]
    out.hash = table_hash(clean)
    ts = pd.to_datetime(clean[S.TS], utc=True)
    out.ts_min, out.ts_max = ts.min(), ts.max()
    if table == S.EVENTS:
        out.daily = F.daily_item_counts(clean)
    clean[POS] = (np.int64(index) << _PART_BITS) + np.flatnonzero(keep).astype(np.int64)
    bucket = user_bucket(clean[S.USER_ID], layout.buckets)
    for b in np.unique(bucket):
        target = layout.bucket_dir(table, int(b)) / f"{name}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        with pio.atomic_path(target) as tmp:
            clean.loc[bucket == b].to_parquet(tmp, index=False)
    return out


@dataclass
class PartitionedData:
    """The validated data of a partitioned run: the report, the in-memory tables (items, users)
    and what the later steps need from the partitions."""

    report: ValidationReport
    layout: Layout
    outcomes: dict[str, list[PartOutcome]]

    @property
    def items(self) -> pd.DataFrame:
        return self.report.clean_tables[S.ITEMS]

    @property
    def users(self) -> pd.DataFrame | None:
        return self.report.clean_tables.get(S.USERS)

    def ts_range(self, table: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        lows = [o.ts_min for o in self.outcomes[table] if o.ts_min is not None]
        highs = [o.ts_max for o in self.outcomes[table] if o.ts_max is not None]
        if not lows or not highs:
            raise ValueError(f"no clean {table} to split")
        return min(lows), max(highs)

    def daily(self) -> pd.DataFrame:
        return F.combine_daily_counts(
            [o.daily for o in self.outcomes[S.EVENTS] if o.daily is not None]
        )

    def data_hash(self) -> str:
        """The same data version `tasks.features.data_hash` gives the clean tables read whole."""
        hashes: dict[str, Any] = {S.ITEMS: (list(self.items.columns), table_hash(self.items))}
        for table in USER_TABLES:
            parts = [o for o in self.outcomes[table] if o.columns]
            columns = parts[0].columns if parts else []
            hashes[table] = (columns, combine_table_hashes([o.hash for o in parts]))
        return data_hash_of(hashes)


def _whole_table(
    data_dir: Path, table: str, parameters: dict[str, Any], threshold: float, qdir: Path
) -> tuple[TableReport, pd.DataFrame | None, Any]:
    """A table that stays in memory (items, users), checked as the local engine checks it."""
    raw = pio.read_table(data_dir, table, required=table in S.REQUIRED_TABLES)
    if raw is None:
        return TableReport(table=table), None, None
    part, clean, bad, result = validate_partition(raw, table, parameters)
    report = merge_table_reports(table, [part], threshold)
    if bad is not None:
        report.quarantine_path = write_quarantine(bad, qdir, table)
    return report, clean, None if result is None else result.gx_result


def validate_partitioned(
    data_dir: str | Path,
    layout: Layout,
    threshold: float,
    now: Any = None,
    build_docs: bool = True,
) -> PartitionedData:
    """Validate every table of `data_dir`: events and offers partition by partition on the
    cluster (`validate_part`), items and users in this process. Same counts, quarantine reasons
    and threshold decision as `expectations.validate_data_dir` on the whole tables.

    Raises:
        pricing.io.ContractError: a required table is missing, or a partition cannot be read or
            lacks a required column (the message names the file).
    """
    data_dir = Path(data_dir)
    qdir = data_dir / "quarantine"
    report = ValidationReport(data_dir=data_dir, threshold=threshold)
    paths = {t: pio.find_table_file(data_dir, t) for t in S.TABLES}
    for table in S.REQUIRED_TABLES:
        if paths[table] is None:
            pio.read_table(data_dir, table)  # raises the usual "table is missing" error
    parts = {t: pio.table_parts(paths[t]) for t in USER_TABLES}  # type: ignore[arg-type]
    for table, files in parts.items():
        check_parts(files, table)

    items_report, items, items_gx = _whole_table(
        data_dir, S.ITEMS, contract_parameters(now), threshold, qdir
    )
    known = None if items is None else items[S.ITEM_ID].tolist()
    parameters = contract_parameters(now, known)
    outcomes: dict[str, list[PartOutcome]] = {}
    reports = {S.ITEMS: items_report}
    gx = {S.ITEMS: items_gx}
    if layout.work.exists():
        shutil.rmtree(layout.work)
    with engine.client() as client:
        for table in USER_TABLES:
            taken = taken_ids(parts[table], table)
            shutil.rmtree(qdir / table, ignore_errors=True)  # a stale quarantine would mislead
            (qdir / f"{table}.parquet").unlink(missing_ok=True)
            n = len(parts[table])
            futures = client.map(
                validate_part,
                range(n),
                parts[table],
                [table] * n,
                parameters=parameters,
                taken=taken,
                layout=layout,
                quarantine_dir=qdir,
                pure=False,
            )
            outcomes[table] = client.gather(futures)
            tr = merge_table_reports(table, [o.report for o in outcomes[table]], threshold)
            if any(o.quarantined for o in outcomes[table]):
                tr.quarantine_path = str(qdir / table)
            reports[table] = tr
            gx.update({f"{table}/{o.name}": o.gx_result for o in outcomes[table]})
    users_report, users, users_gx = _whole_table(data_dir, S.USERS, parameters, threshold, qdir)
    if paths[S.USERS] is not None:
        reports[S.USERS], gx[S.USERS] = users_report, users_gx
    for table in S.TABLES:
        if table in reports:
            report.tables[table] = reports[table]
            report.errors.extend(reports[table].errors)
    report.gx_results = {k: v for k, v in gx.items() if v is not None}
    if items is not None:
        report.clean_tables[S.ITEMS] = items
    if users is not None:
        report.clean_tables[S.USERS] = users
    finish_report(report, build_docs)
    return PartitionedData(report, layout, outcomes)


# --- features -----------------------------------------------------------------------------------


def bucket_features(
    bucket: int,
    layout: Layout,
    items: pd.DataFrame,
    daily: pd.DataFrame,
    valid_start: pd.Timestamp,
    test_start: pd.Timestamp,
) -> dict[str, Any]:
    """Features of one bucket's offers (on a worker), written next to them; returns the bucket's
    split counts, its training purchases and the items its training offers show."""
    offers = read_bucket(layout, S.OFFERS, bucket)
    if not len(offers):
        return {"offers": 0, "train": 0, "valid": 0, "test": 0, "train_buys": 0.0, "items": set()}
    events = read_bucket(layout, S.EVENTS, bucket)
    feats = F.offer_features(offers.drop(columns=POS), events.drop(columns=POS), items, daily)
    feats = feats.reset_index(drop=True)
    feats[POS] = offers[POS].to_numpy()
    path = layout.features_path(bucket)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pio.atomic_path(path) as tmp:
        feats.to_parquet(tmp, index=False)
    split = split_at(pd.to_datetime(offers[S.TS], utc=True), valid_start, test_start)
    train = offers.iloc[split.train]
    return {
        "offers": len(offers),
        "train": len(split.train),
        "valid": len(split.valid),
        "test": len(split.test),
        "train_buys": float(train[S.PURCHASED].astype(float).sum()),
        "items": set(train[S.ITEM_ID].astype(str)),
    }


@dataclass
class FeatureStats:
    """What the features step learned about the whole data, partition by partition."""

    valid_start: pd.Timestamp
    test_start: pd.Timestamp
    buckets: list[dict[str, Any]]
    columns: list[str]

    def total(self, key: str) -> float:
        return sum(b[key] for b in self.buckets)

    @property
    def base_rate(self) -> float:
        return self.total("train_buys") / max(self.total("train"), 1)

    @property
    def train_items(self) -> set[str]:
        return set().union(*(b["items"] for b in self.buckets))

    def summary(self) -> dict[str, object]:
        """The same fields as `pricing.split.TimeSplit.summary`."""
        return {
            "test_start": self.test_start.isoformat(),
            "valid_start": self.valid_start.isoformat(),
            "n_train": int(self.total("train")),
            "n_valid": int(self.total("valid")),
            "n_test": int(self.total("test")),
        }


def features_partitioned(data: PartitionedData, split_config: Any) -> FeatureStats:
    """Every bucket's features on the cluster (`bucket_features`), with the split's boundaries
    from the whole data's time span, as `pricing.split.time_split` sets them.

    Raises:
        ValueError: the split leaves no training or no test offer.
    """
    lo, hi = data.ts_range(S.OFFERS)
    valid_start, test_start = split_bounds(
        lo, hi, split_config.test_start, split_config.test_fraction, split_config.valid_fraction
    )
    with engine.client() as client:
        [items, daily] = client.scatter([data.items, data.daily()], broadcast=True)
        futures = client.map(
            bucket_features,
            range(data.layout.buckets),
            layout=data.layout,
            items=items,
            daily=daily,
            valid_start=valid_start,
            test_start=test_start,
            pure=False,
        )
        stats = FeatureStats(valid_start, test_start, client.gather(futures), [])
    first = next((b for b in range(data.layout.buckets) if stats.buckets[b]["offers"]), None)
    if first is not None:
        import pyarrow.parquet as pq

        names = pq.read_schema(data.layout.features_path(first)).names
        stats.columns = [c for c in names if c != POS]
    if stats.total("train") == 0 or stats.total("test") == 0:
        raise ValueError(
            f"time split leaves an empty part (train={int(stats.total('train'))}, "
            f"test={int(stats.total('test'))}); offers span {lo} .. {hi}, test starts {test_start}"
        )
    return stats


# --- what training and evaluation read ----------------------------------------------------------


def _gather(
    data: PartitionedData,
    buckets: list[int],
    pick: Callable[[int, pd.DataFrame], np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(offers, features, events) of `buckets`, in the local engine's order: every offer, or the
    rows `pick(bucket, offers)` selects and only their users' events."""
    offers, feats, events = [], [], []
    for b in buckets:
        o = read_bucket(data.layout, S.OFFERS, b)
        if not len(o):
            continue
        f = pd.read_parquet(data.layout.features_path(b))
        rows = np.arange(len(o)) if pick is None else pick(b, o)
        if not len(rows):
            continue
        o, f = o.iloc[rows], f.iloc[rows]
        e = read_bucket(data.layout, S.EVENTS, b)
        if pick is not None:
            e = e[e[S.USER_ID].isin(set(o[S.USER_ID].astype(str)))]
        offers.append(o)
        feats.append(f)
        events.append(e)
    if not offers:
        raise ValueError("no offers in the buckets asked for")

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        df = pd.concat(frames, ignore_index=True).sort_values(POS, kind="stable")
        return df.drop(columns=POS).reset_index(drop=True)

    return cat(offers), cat(feats), cat(events)


def training_sample(
    data: PartitionedData, stats: FeatureStats, max_offers: int | None
) -> tuple[PricingData, PricingData, dict[str, Any]]:
    """(train, valid, description) from whole user buckets, in bucket order, until their training
    and validation offers reach `max_offers` (None: every bucket): a sample of users, each with
    all of their history."""
    chosen: list[int] = []
    rows = 0
    for b, s in enumerate(stats.buckets):
        n = s["train"] + s["valid"]
        if not s["offers"]:
            continue
        if chosen and max_offers is not None and rows + n > max_offers:
            break
        chosen.append(b)
        rows += n
    offers, feats, events = _gather(data, chosen)
    split = split_at(pd.to_datetime(offers[S.TS], utc=True), stats.valid_start, stats.test_start)

    def part(idx: np.ndarray) -> PricingData:
        return PricingData(
            offers=offers.iloc[idx].reset_index(drop=True),
            items=data.items,
            events=events,
            features=feats.iloc[idx].reset_index(drop=True),
            users=data.users,
        )

    total = int(stats.total("train") + stats.total("valid"))
    description = {
        "buckets": len(chosen),
        "of_buckets": data.layout.buckets,
        "offers": rows,
        "of_offers": total,
        "share": rows / total if total else 1.0,
    }
    return part(split.train), part(split.valid), description


def _test_ranks(bucket: int, layout: Layout, test_start: pd.Timestamp, seed: int) -> pd.DataFrame:
    o = pio.read_in_order(layout.bucket_dir(S.OFFERS, bucket), columns=[S.OFFER_ID, S.TS, POS])
    if o is None:
        return pd.DataFrame(
            {
                "rank": pd.Series(dtype="uint64"),
                POS: pd.Series(dtype="int64"),
                "bucket": pd.Series(dtype="int64"),
            }
        )
    o = o[(pd.to_datetime(o[S.TS], utc=True) >= test_start).to_numpy()]
    return pd.DataFrame(
        {
            "rank": sample_rank(o[S.OFFER_ID], seed),
            POS: o[POS].to_numpy(np.int64),
            "bucket": np.int64(bucket),
        }
    )


def _items_seen_before(bucket: int, layout: Layout, at: pd.Timestamp) -> set[str]:
    e = pio.read_in_order(layout.bucket_dir(S.EVENTS, bucket), columns=[S.ITEM_ID, S.TS, POS])
    if e is None:
        return set()
    before = (pd.to_datetime(e[S.TS], utc=True) < at).to_numpy()
    return set(e.loc[before, S.ITEM_ID].dropna().astype(str))


def evaluation_sample(
    data: PartitionedData, stats: FeatureStats, max_offers: int | None, seed: int
) -> tuple[PricingData, set[str]]:
    """The test offers the evaluation scores (the seeded sample `tasks.evaluation` draws from the
    whole test set: the `max_offers` lowest `sample_rank`s, found by a Dask tree reduction), their
    users' events, and the items known before them (training offers' items and items with an
    event before the first sampled offer: what `cold_start_slices` counts as seen)."""
    import dask.dataframe as dd

    meta = pd.DataFrame(
        {
            "rank": pd.Series(dtype="uint64"),
            POS: pd.Series(dtype="int64"),
            "bucket": pd.Series(dtype="int64"),
        }
    )
    ranks = dd.from_map(
        _test_ranks,
        list(range(data.layout.buckets)),
        layout=data.layout,
        test_start=stats.test_start,
        seed=seed,
        meta=meta,
    )
    chosen = ranks.nsmallest(max_offers, "rank") if max_offers is not None else ranks
    with engine.client() as client:
        picked = client.compute(chosen).result()
        wanted = {int(b): set(g[POS].tolist()) for b, g in picked.groupby("bucket")}
        offers, feats, events = _gather(
            data,
            sorted(wanted),
            lambda b, o: np.flatnonzero(o[POS].isin(wanted[b]).to_numpy()),
        )
        first = pd.to_datetime(offers[S.TS], utc=True).min()
        seen = client.gather(
            client.map(_items_seen_before, range(data.layout.buckets), layout=data.layout, at=first)
        )
    test = PricingData(offers, data.items, events, feats, data.users)
    return test, stats.train_items.union(*seen)


def feature_build(data: PartitionedData, stats: FeatureStats) -> FeatureBuild:
    """The features step's record, as the local engine's `FeatureBuild` (features stay on disk)."""
    data_hash = data.data_hash()
    return FeatureBuild(
        pd.DataFrame(columns=stats.columns),
        cache_key(data_hash, feature_code_hash()),
        False,
        data_hash,
    )


# --- flow steps ---------------------------------------------------------------------------------


@task(name="validate_partitions", task_run_name="validate-{table_dir.name}", cache_policy=NO_CACHE)
def validate_partitions(table_dir: Path, layout: Layout, threshold: float) -> PartitionedData:
    """`validate_partitioned` as a flow step; fails like `tasks.validation.validate_tables`."""
    from tasks.validation import raise_if_failed

    data = validate_partitioned(table_dir, layout, threshold)
    report = data.report
    get_run_logger().info(
        "validated %s in %d user buckets: %s",
        table_dir,
        layout.buckets,
        ", ".join(f"{t} {r.rows} rows ({r.bad_rows} bad)" for t, r in report.tables.items()),
    )
    raise_if_failed(report)
    return data


@task(
    name="build_features_partitioned",
    task_run_name="build-features-partitioned",
    cache_policy=NO_CACHE,
)
def build_features_partitioned(data: PartitionedData, split_config: Any) -> FeatureStats:
    """`features_partitioned` as a flow step."""
    stats = features_partitioned(data, split_config)
    get_run_logger().info(
        "features of %d offers in %d buckets: %s",
        int(stats.total("offers")),
        data.layout.buckets,
        stats.summary(),
    )
    return stats


@task(name="read_samples", task_run_name="read-training-and-test-samples", cache_policy=NO_CACHE)
def read_samples(
    data: PartitionedData,
    stats: FeatureStats,
    max_train_offers: int | None,
    max_test_offers: int | None,
    seed: int,
) -> tuple[PricingData, PricingData, PricingData, set[str], dict[str, Any]]:
    """(train, valid, test, train_items, sample description) for the models and the evaluation."""
    train, valid, sample = training_sample(data, stats, max_train_offers)
    test, train_items = evaluation_sample(data, stats, max_test_offers, seed)
    sample["test_offers"] = len(test)
    get_run_logger().info(
        "training on %d of %d offers (%d of %d user buckets); evaluating %d test offers",
        sample["offers"],
        sample["of_offers"],
        sample["buckets"],
        sample["of_buckets"],
        len(test),
    )
    return train, valid, test, train_items, sample
