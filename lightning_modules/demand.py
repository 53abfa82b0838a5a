"""`BertDemand`: the two-tower BERT price-response model behind the `DemandModel` interface.

Text (item texts, search queries) is encoded once per data version by a frozen BERT and cached;
training and serving only run the small towers and the monotone price head. Serving is split the
way the scorer uses it: `warm()` computes item vectors once per model version, `user_state()` runs
the user tower when a user has new events, and `demand()` runs only the head over the candidates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from lightning_modules.components.towers import TextTop
from lightning_modules.price_datamodule import PriceDataModule, loader
from lightning_modules.price_module import PriceResponseModule
from lightning_modules.sequences import HistoryBatcher, Vocab, event_arrays
from lightning_modules.streaming import Shards, ShardScan, ShardStream, scan_shards
from mlops.config import BertConfig
from mlops.models import HybridWide, WideFeatures
from mlops.text import TextEncoder, item_texts
from pricing import features as F
from pricing import schema as S
from pricing.logistic import sigmoid
from pricing.model import DemandModel, PricingData

_STATE = "bert_state.pt"
_META = "bert.json"
_CATALOG = "catalog.parquet"
LAST_CKPT = "last.ckpt"
log = logging.getLogger(__name__)


class LastCheckpoint(pl.Callback):
    """Writes `dirpath/last.ckpt` every n optimizer steps and at each epoch end, atomically.

    The file is written next to its final name and renamed into place, so a run killed mid-write
    (SIGKILL, preemption) always leaves the previous complete checkpoint behind.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int) -> None:
        self.path = Path(dirpath) / LAST_CKPT
        self.every = max(int(every_n_steps), 1)
        self._saved_step = -1

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._saved_step:
            return
        self._saved_step = trainer.global_step
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)  # collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # global_step counts optimizer steps: with accumulation it stays put between them.
        step = trainer.global_step
        if step and step != self._saved_step and step % self.every == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._save(trainer)


def _loggers(*loggers: Any) -> Any:
    """The Trainer's `logger`: False for none, one logger, or a list (CSV and the flow's MLflow)."""
    flat: list[Any] = []
    for lg in loggers:
        if isinstance(lg, list | tuple):
            flat.extend(x for x in lg if x)
        elif lg:
            flat.append(lg)
    return False if not flat else flat[0] if len(flat) == 1 else flat


def device_plan(trainer_args: dict[str, Any]) -> tuple[str, bool]:
    """The one device decision of training: (the Trainer's accelerator, whether that is a GPU).

    `accelerator` from the trainer settings (the YAML's `trainer:` or the flow's `--devices`/
    `--accelerator`) wins; unset or "auto" means a GPU when this machine has one, else the CPU.
    Everything GPU-specific (pinned batches, TF32) follows the same answer, so a GPU box never
    trains on its CPU with GPU settings on, or the other way round.
    """
    accel = str(trainer_args.get("accelerator") or "auto").lower()
    if accel == "auto":
        accel = "gpu" if torch.cuda.is_available() else "cpu"
    return accel, accel in {"gpu", "cuda"}


def seen_items(train: PricingData, vocab: Vocab) -> np.ndarray:
    """1-based indices of the catalog items training shows: offered in training, or in an event
    up to the last training offer. Every other item is cold: the network's fallback serves it."""
    end = pd.to_datetime(train.offers[S.TS], utc=True).max()
    ev = train.events
    early = ev[(pd.to_datetime(ev[S.TS], utc=True) <= end).to_numpy()] if len(ev) else ev
    ids = pd.concat([train.offers[S.ITEM_ID], early[S.ITEM_ID]]).dropna().astype(str).unique()
    idx = vocab.item_index(ids)
    return np.unique(idx[idx > 0])


def searched_queries(events: pd.DataFrame, end: pd.Timestamp | None) -> pd.Series:
    """The search queries of `events` up to `end` (the last offer the fit sees; None: all): the
    query vocabulary never holds a query searched only after the fitted period."""
    keep = events[S.EVENT_TYPE].astype(str) == S.SEARCH
    if end is not None and len(events):
        keep &= pd.to_datetime(events[S.TS], utc=True) <= end
    return events.loc[keep, S.QUERY]


class BertDemand(DemandModel):
    """User-history transformer + item text tower + monotone price head.

    Args:
        config: the experiment YAML's `bert:` block, typed (`BertConfig`; a dict is validated
            into one, so unknown keys and wrong types are errors).
        seed: seeds Lightning (`seed_everything(seed, workers=True)`).
        trainer: Lightning Trainer overrides: devices, strategy, precision, accelerator, ...
    """

    name = "bert"

    def __init__(
        self,
        config: BertConfig | dict[str, Any] | None = None,
        seed: int = 0,
        trainer: dict[str, Any] | None = None,
    ) -> None:
        self.config = (
            config if isinstance(config, BertConfig) else BertConfig.model_validate(config or {})
        )
        self.seed = seed
        # The flow's devices/strategy/precision override the YAML's trainer block.
        self.trainer_args = {**dict(self.config.trainer or {}), **dict(trainer or {})}
        self.module: PriceResponseModule | None = None
        self.vocab: Vocab | None = None
        self.catalog = pd.DataFrame()
        self._encoder: TextEncoder | None = None
        self._extra_queries: list[str] = []  # unseen queries encoded on the fly (serving)
        self._extra_vecs = np.zeros((0, 0), np.float32)
        self._item_vecs: torch.Tensor | None = None
        self._ab_cache: tuple[Any, Any, np.ndarray, np.ndarray] | None = None
        self.wide: WideFeatures | None = None  # wide & deep: the tabular features (`config.wide`)

    # --- helpers ---------------------------------------------------------------------------------
    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder(self.config.text_encoder, self.config.text_cache_dir)
        return self._encoder

    def _set_catalog(self, items: pd.DataFrame) -> None:
        self.catalog = items.reset_index(drop=True).copy()
        self.catalog[S.ITEM_ID] = self.catalog[S.ITEM_ID].astype(str)

    @property
    def net(self) -> Any:
        assert self.module is not None, "fit or load the model first"
        return self.module.net

    def _register_queries(self, queries: Any) -> None:
        """Encode queries outside the cached vocabulary (the only BERT call after training)."""
        assert self.vocab is not None
        if not self.config.text:
            return  # no text in this model: every query is "none"
        known = set(self.vocab.queries) | set(self._extra_queries)
        q = pd.Series(queries, dtype=object).dropna().astype(str)
        new = sorted({x for x in q if x and x not in known})
        if not new:
            return
        vecs = self.encoder.encode(new)
        self._extra_vecs = (
            vecs if not self._extra_queries else np.concatenate([self._extra_vecs, vecs])
        )
        self._extra_queries += new

    def _query_table(self) -> torch.Tensor | None:
        if not self._extra_queries:
            return None
        extra = torch.from_numpy(self._extra_vecs).to(self.net.query_text)
        return torch.cat([self.net.query_text, extra])

    def _events(self, events: pd.DataFrame) -> dict[str, np.ndarray]:
        assert self.vocab is not None
        if not self.config.sequence:
            events = events.iloc[:0]  # ablation: the network sees no history
        if S.QUERY in events:
            self._register_queries(
                events.loc[events[S.EVENT_TYPE].astype(str) == S.SEARCH, S.QUERY]
            )
        return event_arrays(events, self.vocab, self._extra_queries)

    # --- training --------------------------------------------------------------------------------
    def _trainer(self, root: str, valid: bool, steps_per_epoch: int | None = None) -> Any:
        from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
        from pytorch_lightning.loggers import CSVLogger

        from lightning_modules.callbacks import progress_bar, quiet_lightning

        quiet_lightning()
        cfg, args = self.config, dict(self.trainer_args)
        callbacks: list[Any] = []
        bar = None if args.get("enable_progress_bar") is False else progress_bar()
        if bar is not None:
            callbacks.append(bar)
        if cfg.checkpoint_dir:
            callbacks.append(LastCheckpoint(root, int(cfg.checkpoint_every_n_steps)))
        if valid:
            callbacks.append(
                EarlyStopping("val/loss", patience=int(cfg.patience), mode="min", strict=False)
            )
            callbacks.append(
                ModelCheckpoint(dirpath=root, monitor="val/loss", mode="min", save_top_k=1)
            )
        args.pop("accelerator", None)
        kwargs: dict[str, Any] = {
            "accelerator": device_plan(self.trainer_args)[0],
            "devices": args.pop("devices", 1),
            "max_epochs": int(cfg.max_epochs),
            "max_steps": int(cfg.max_steps),
            "logger": _loggers(
                CSVLogger(cfg.log_dir, name="bert") if cfg.log_dir else None,
                args.pop("logger", None),
            ),
            "enable_checkpointing": valid,
            "enable_progress_bar": bar is not None,
            # a few points per epoch on a short run (Lightning warns below its default of 50)
            "log_every_n_steps": min(50, max(1, (steps_per_epoch or 200) // 4)),
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": root,
            "callbacks": callbacks + list(args.pop("callbacks", [])),
            "deterministic": False,
            "accumulate_grad_batches": int(cfg.accumulate_grad_batches),
            # EpochSampler shards by rank itself and keeps the order a function of (seed, epoch).
            "use_distributed_sampler": False,
        }
        kwargs.update(args)
        return pl.Trainer(**kwargs)

    def fit(
        self, train: PricingData | Shards, valid: PricingData | None = None
    ) -> dict[str, float]:
        """Train on `train`: a split in memory, or `Shards` to stream the training batches from
        (one shard in memory at a time; the validation split stays in memory). Streaming first
        makes one pass over the shards for the vocabulary and the training statistics, and does
        not support the wide features (`wide: true`), which are fitted on the whole split."""
        cfg = self.config
        pl.seed_everything(self.seed, workers=True, verbose=False)
        self._set_catalog(train.items)
        scan: ShardScan | None = None
        data: PricingData | None = None  # the training split when it is in memory
        # Like the baselines: events up to the last offer fitted on (validation's, when given).
        ends = [] if valid is None or not len(valid) else [valid.offers[S.TS]]
        if isinstance(train, Shards):
            if cfg.wide:
                raise ValueError("wide features are fitted in memory: train from a PricingData")
            scan = scan_shards(train, text=bool(cfg.text))
            if scan.last_offer is not None:
                ends.append(pd.Series([pd.Timestamp(scan.last_offer, unit="ns", tz="UTC")]))
        else:
            data = train
            ends.append(data.offers[S.TS])
        end = max((pd.to_datetime(ts, utc=True).max() for ts in ends), default=None)
        if data is not None:
            queries = searched_queries(data.events, end)
        else:
            assert scan is not None
            cutoff = None if end is None else end.value  # ns UTC, like the scan's times
            queries = pd.Series(
                sorted(q for q, t in scan.queries.items() if cutoff is None or t <= cutoff),
                dtype=object,
            )
        if valid is not None and (data is None or valid.events is not data.events):
            queries = pd.concat([queries, searched_queries(valid.events, end)])
        if not cfg.text:
            queries = queries.iloc[:0]
        self.vocab = vocab = Vocab.build(
            self.catalog, queries.dropna().astype(str).unique().tolist()
        )
        t0 = time.perf_counter()
        if cfg.text:
            item_vecs = self.encoder.encode(item_texts(self.catalog))
            query_vecs = self.encoder.encode(vocab.queries)
            dim = self.encoder.dim
        else:  # ablation: zero text vectors of width 1 (the projection's bias only)
            dim = 1
            item_vecs = np.zeros((len(vocab.item_ids), dim), np.float32)
            query_vecs = np.zeros((0, dim), np.float32)
        encode_s = time.perf_counter() - t0

        if data is not None:
            mean_rate, n_train = data.offers[S.PURCHASED].mean(), len(data)
            seen_idx = seen_items(data, vocab)
        else:
            assert scan is not None
            mean_rate, n_train, seen_idx = scan.rate, scan.n, scan.seen(vocab)
        rate = float(np.clip(mean_rate, 1e-3, 1 - 1e-3))
        has_valid = valid is not None and len(valid) > 0
        train_wide = valid_wide = None
        self.wide = None
        wide_info: dict[str, float] = {}
        if cfg.wide and data is not None:
            self.wide = self._new_wide()
            wide_info = self.wide.fit(data, valid if has_valid else None)
            # the hybrid's tree columns: out of fold on the training rows
            train_wide = self.wide.training_matrix(data)
            if has_valid and valid is not None:
                valid_wide = self.wide.matrix(valid)
        module = PriceResponseModule(
            n_items=len(vocab.item_ids),
            n_categories=len(vocab.categories),
            n_queries=len(vocab.queries),
            text_dim=dim,
            a_init=math.log(rate / (1 - rate)),
            n_wide=0 if self.wide is None else self.wide.dim,
            n_user_wide=0 if self.wide is None else self.wide.n_user,
            **cfg.arch(),
        )
        item_text = np.zeros((len(vocab.item_ids) + 1, dim), np.float32)
        item_text[1:] = item_vecs
        query_text = np.zeros((len(vocab.queries) + 1, dim), np.float32)
        query_text[1:] = query_vecs.reshape(-1, dim)
        seen = np.zeros(len(vocab.item_ids) + 1, np.float32)
        seen[seen_idx] = 1.0
        module.set_text_vectors(
            torch.from_numpy(item_text),
            torch.from_numpy(vocab.item_category),
            torch.from_numpy(query_text),
            torch.from_numpy(seen),
        )
        if cfg.finetune_layers and cfg.text:
            top = TextTop.for_items(
                self.encoder, item_texts(self.catalog), int(cfg.finetune_layers)
            )
            module.net.items.attach_text_top(top, int(cfg.finetune_items))
        on_gpu = device_plan(self.trainer_args)[1]
        if on_gpu:
            torch.set_float32_matmul_precision("high")  # TF32 for whatever still runs in fp32
        if cfg.compile:
            backend = cfg.compile if isinstance(cfg.compile, str) else "inductor"
            module.compile_net(backend=backend)
        pin = on_gpu if cfg.pin_memory is None else bool(cfg.pin_memory)
        stream = None
        if data is None:
            assert isinstance(train, Shards) and scan is not None
            # Lightning doubts an IterableDataset's length with workers; this one is exact.
            warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__`")
            stream = ShardStream(
                train,
                scan.counts,
                vocab,
                max_len=int(cfg.max_len),
                batch_size=int(cfg.batch_size),
                seed=self.seed,
                trim=bool(cfg.trim_padding),
                sequence=bool(cfg.sequence),
                num_workers=int(cfg.num_workers),
            )
            offers, events = pd.DataFrame(), valid.events if valid is not None else None
        else:
            offers, events = data.offers, data.events
        if events is None:
            events = pd.DataFrame(columns=S.column_names(S.EVENTS))
        dm = PriceDataModule(
            offers,
            valid.offers if has_valid and valid is not None else None,
            events if cfg.sequence else events.iloc[:0],
            vocab,
            max_len=int(cfg.max_len),
            batch_size=int(cfg.batch_size),
            num_workers=int(cfg.num_workers),
            pin_memory=pin,
            eval_batch_size=int(cfg.eval_batch_size),
            seed=self.seed,
            trim_padding=bool(cfg.trim_padding),
            train_wide=train_wide,
            valid_wide=valid_wide,
            train_stream=stream,
        )
        with contextlib.ExitStack() as stack:
            if cfg.checkpoint_dir:
                root = str(cfg.checkpoint_dir)
                Path(root).mkdir(parents=True, exist_ok=True)
            else:
                root = stack.enter_context(tempfile.TemporaryDirectory(prefix="bert-ckpt-"))
            last = Path(root) / LAST_CKPT
            ckpt_path = str(last) if cfg.checkpoint_dir and cfg.resume and last.exists() else None
            if ckpt_path:
                log.info("resuming BERT training from %s", ckpt_path)
            batches = (
                len(stream)
                if stream is not None
                else math.ceil(n_train / max(int(cfg.batch_size), 1))
            )
            trainer = self._trainer(root, has_valid, batches)
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
            fit_s = time.perf_counter() - t0
            if not trainer.is_global_zero:
                # A worker rank (Lightning's DDP launcher, torchrun, srun) re-ran the whole command:
                # its share of training is done; evaluation, MLflow and registration are rank 0's.
                log.info("rank %d finished training; exiting", trainer.global_rank)
                raise SystemExit(0)
            best_path = trainer.checkpoint_callback.best_model_path if has_valid else ""
            best_score = trainer.checkpoint_callback.best_model_score if has_valid else None
            if best_path and Path(best_path).exists():
                state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
                module.load_state_dict(state)
        module = module.cpu()
        # Fine-tuned text: the best weights' vectors go into the buffer; the layers are dropped.
        module.net.items.bake_text()
        module.net.items.detach_text_top()
        self.module = module.eval()
        self._ab_cache = None
        temperature = float("nan")
        if cfg.calibrate and has_valid and valid is not None:
            temperature = self._calibrate(valid)
        self.warm()
        epochs = max(int(trainer.current_epoch), 1)
        steps = int(trainer.global_step)
        per_step = int(cfg.batch_size) * int(cfg.accumulate_grad_batches)
        samples = steps * per_step if steps else epochs * n_train
        return {
            "cold_items": float(len(vocab.item_ids) - int(seen[1:].sum())),
            "temperature": temperature,
            "epochs": float(epochs),
            "steps": float(steps),
            "best_val_loss": float(best_score) if best_score is not None else float("nan"),
            "samples_per_s": samples / max(fit_s, 1e-9),
            "encode_seconds": encode_s,
            "n_params": float(sum(p.numel() for p in module.parameters())),
            "finetune_layers": float(cfg.finetune_layers if cfg.text else 0),
            **({f"wide_{k}": float(v) for k, v in wide_info.items()} if cfg.hybrid else {}),
        }

    def _new_wide(self) -> WideFeatures:
        """The wide features `config` asks for: the baselines' columns, plus the hybrid's tree
        and text columns (`HybridWide`, sharing this model's text encoder) when set."""
        cfg = self.config
        if not cfg.hybrid:
            return WideFeatures()
        params = {
            "text_encoder": cfg.text_encoder,
            "text_cache_dir": cfg.text_cache_dir,
            **dict(cfg.tree_params),
        }
        return HybridWide(
            tree=cfg.tree,
            text=cfg.wide_text,
            folds=int(cfg.tree_folds),
            params=params,
            seed=self.seed,
            encoder=self.encoder,
        )

    def _calibrate(self, valid: PricingData) -> float:
        """Fit the head's scale s on the validation offers by log loss; returns the temperature 1/s.

        A one-parameter fit after early stopping (temperature scaling): s multiplies a and b alike,
        so b stays >= 0 and the curve's shape in price is kept; it only gets sharper or flatter.
        """
        a, b = self._offer_ab(valid)
        self._ab_cache = None
        y = valid.offers[S.PURCHASED].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            lpr = F.price_features(valid.offers[S.PRICE].to_numpy(float), valid.list_price())
        z = a - b * np.where(np.isfinite(lpr), lpr, 0.0)
        ok = np.isfinite(z)
        z, y = z[ok], y[ok]

        def loss(s: float) -> float:
            t = s * z
            return float(np.mean(np.logaddexp(0.0, t) - y * t))

        lo, hi = math.log(0.25), math.log(4.0)  # golden-section search on log s
        g = (math.sqrt(5) - 1) / 2
        c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        for _ in range(60):
            if loss(math.exp(c)) < loss(math.exp(d)):
                hi = d
            else:
                lo = c
            c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        s = math.exp((lo + hi) / 2)
        if loss(s) >= loss(1.0):
            s = 1.0  # never worse than no calibration on the split it is fitted on
        with torch.no_grad():
            self.net.head.scale.fill_(s)
        return 1.0 / s

    # --- batch prediction ------------------------------------------------------------------------
    def _offer_ab(self, data: PricingData) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) per offer, computed once per (offers, events) pair and reused across grids."""
        c = self._ab_cache
        if c is not None and c[0] is data.offers and c[1] is data.events:
            return c[2], c[3]
        assert self.vocab is not None
        batcher = HistoryBatcher(
            self._events(data.events),
            data.offers,
            self.vocab,
            int(self.config.max_len),
            wide=None if self.wide is None else self.wide.matrix(data),
        )
        table = self._query_table()
        a_out, b_out = [], []
        net = self.net
        with torch.inference_mode():
            for batch in loader(batcher, len(batcher), int(self.config.eval_batch_size)):
                u = net.user_vector(batch, table)
                a, b = net.head(u, net.items(batch["item"]), batch.get("wide"), net.category(batch))
                a_out.append(a.float().numpy())
                b_out.append(b.float().numpy())
        a_all = np.concatenate(a_out) if a_out else np.zeros(0)
        b_all = np.concatenate(b_out) if b_out else np.zeros(0)
        self._ab_cache = (data.offers, data.events, a_all, b_all)
        return a_all, b_all

    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        a, b = self._offer_ab(data)
        lp = data.list_price()
        with np.errstate(invalid="ignore", divide="ignore"):
            return sigmoid(a[:, None] - b[:, None] * np.log(np.asarray(grid, float) / lp[:, None]))

    def offer_params(self, data: PricingData) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) per offer of `data`: P = sigmoid(a - b * log(price / list_price))."""
        a, b = self._offer_ab(data)
        return a.copy(), b.copy()

    # --- serving ---------------------------------------------------------------------------------
    def warm(self) -> None:
        """Item vectors for the whole catalog, once per model version."""
        assert self.vocab is not None
        with torch.inference_mode():
            self._item_vecs = self.net.items(torch.arange(len(self.vocab.item_ids) + 1))
        self._list_price = self.catalog[S.LIST_PRICE].to_numpy(float)

    def user_state(self, events: pd.DataFrame, at: Any = None) -> Any:
        """The user vector from one user's events (any order) before `at`.

        `at` defaults to the last event plus `serving_gap_s` (a quote usually follows the latest
        event); an empty history gives the CLS-only vector. With wide features the state is the
        pair (vector, the tabular history state `WideFeatures.user_state` keeps).
        """
        vector = self._user_vector(events, at)
        if self.wide is None:
            return vector
        if at is not None and len(events):
            cut = pd.to_datetime([at], utc=True)[0]
            events = events[(pd.to_datetime(events[S.TS], utc=True) < cut).to_numpy()]
        return (vector, self.wide.user_state(events))

    def _user_vector(self, events: pd.DataFrame, at: Any = None) -> np.ndarray:
        assert self.vocab is not None
        ev = events.assign(**{S.USER_ID: "_"}) if len(events) else events
        if at is None:
            last = pd.to_datetime(events[S.TS], utc=True).max() if len(events) else pd.NaT
            at = (
                pd.Timestamp(0, tz="UTC")
                if pd.isna(last)
                else last + pd.Timedelta(seconds=float(self.config.serving_gap_s))
            )
        offer = pd.DataFrame(
            {
                S.USER_ID: ["_"],
                S.TS: pd.to_datetime([at], utc=True),
                S.ITEM_ID: [None],
                S.PRICE: [np.nan],
            }
        )
        arrays = self._events(ev)
        batcher = HistoryBatcher(arrays, offer, self.vocab, int(self.config.max_len))
        with torch.inference_mode():
            u = self.net.user_vector(batcher([0]), self._query_table())
        return u[0].float().numpy()

    def _head(self, state: Any, item_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._item_vecs is None:
            self.warm()
        assert self._item_vecs is not None
        rows = np.asarray(item_idx, np.int64)
        idx = torch.as_tensor(rows + 1)
        wide = None
        if self.wide is not None:
            state, tabular = state
            wide = torch.from_numpy(self.wide.serving_matrix(tabular, rows))
        with torch.inference_mode():
            iv = self._item_vecs[idx]
            u = torch.from_numpy(np.asarray(state, np.float32)).expand(len(idx), -1)
            a, b = self.net.head(u, iv, wide, self.net.category({"item": idx}))
        return a.numpy().astype(float), b.numpy().astype(float)

    def demand(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """P(purchase) (n, G) for catalog rows `item_idx` at prices `grid`: only the head runs."""
        a, b = self._head(state, item_idx)
        lp = self._list_price[np.asarray(item_idx, np.int64)]
        with np.errstate(invalid="ignore", divide="ignore"):
            return sigmoid(a[:, None] - b[:, None] * np.log(np.asarray(grid, float) / lp[:, None]))

    def price_sensitivity(self, state: Any, item_idx: np.ndarray) -> np.ndarray:
        """b(u, i) >= 0 per catalog row: the elasticity of the demand logit to log price."""
        return self._head(state, item_idx)[1]

    # --- persistence -----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """State dict (frozen text vectors included), hyperparameters, vocabulary and catalog."""
        assert self.module is not None and self.vocab is not None
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.module.state_dict(), path / _STATE)
        meta = {
            "config": self.config.model_dump(mode="json"),
            "seed": self.seed,
            "hparams": dict(self.module.hparams),
            "vocab": self.vocab.to_json(),
        }
        (path / _META).write_text(json.dumps(meta, indent=1))
        self.catalog.to_parquet(path / _CATALOG, index=False)
        if self.wide is not None:
            self.wide.save(path)

    @classmethod
    def load(cls, path: Path) -> BertDemand:
        """Load what `save` wrote; needs no training data and no text encoder (until an unseen query).

        Trusts its directory: go through `mlops.models.load_model`, which checks every file
        against the sha256 in the manifest before torch or pyarrow reads it.
        """
        path = Path(path)
        meta = json.loads((path / _META).read_text())
        m = cls(meta["config"], seed=int(meta["seed"]))
        m._set_catalog(pd.read_parquet(path / _CATALOG))
        m.vocab = Vocab.build(m.catalog, meta["vocab"]["queries"])
        module = PriceResponseModule(**meta["hparams"])
        module.load_state_dict(torch.load(path / _STATE, map_location="cpu", weights_only=True))
        m.module = module.eval()
        if int(meta["hparams"].get("n_wide", 0)):
            m.wide = HybridWide.load(path) if m.config.hybrid else WideFeatures.load(path)
        m.warm()
        return m
