"""Training-step throughput: the project's Lightning step against a plain PyTorch loop, in one run.

Both loops train the same `PriceResponseNet` (same init, same batches from `PriceDataModule`, same
AdamW + LR schedule from `PriceResponseModule.build_optimizer`, same precision) for `--warmup`
untimed steps and then `--steps` timed steps. Prints one JSON object: samples/s, history tokens/s
(true events, and padded positions the transformer actually runs on), `lightning_vs_plain` (goal
>= 0.95), the share of step time spent blocked on the next batch (goal <= 2%), the gain of
`trim_padding` on the plain loop, and, from a FLOP count measured with FlopCounterMode, achieved
TFLOP/s and (on CUDA) MFU against 989 TFLOP/s (H200 dense bf16).

Text vectors come from the tiny random BERT by default (text encoding is done once, before
training, and is not part of the step); `--text-encoder minilm` uses the cached MiniLM vectors.

    python benchmarks/train_throughput.py                                  # bert-tiny on CPU
    python benchmarks/train_throughput.py --config configs/bert-full.yaml --device cuda \\
        --precision bf16-mixed --steps 200 --compile                       # the GPU check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from _provenance import bench_provenance

from lightning_modules.price_datamodule import PriceDataModule
from lightning_modules.price_module import PriceResponseModule
from lightning_modules.sequences import Vocab
from mlops.config import BertConfig
from mlops.text import TextEncoder, item_texts
from pricing import schema as S
from pricing.simulator import SimConfig, simulate
from pricing.split import time_split

H200_BF16_FLOPS = 989e12


class TimedLoader:
    """Wraps a DataLoader: times each blocking `next()` and counts true and padded tokens."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.sampler = loader.sampler  # Lightning calls sampler.set_epoch through this
        self.reset()

    def reset(self) -> None:
        self.wait_s, self.samples, self.tokens, self.padded = 0.0, 0, 0, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - t0
            mask = batch["ev_mask"]
            self.samples += len(mask)
            self.tokens += int(mask.sum())
            self.padded += mask.numel()
            yield batch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(
    args: argparse.Namespace, cfg: dict[str, Any]
) -> tuple[PriceResponseModule, PriceDataModule]:
    """A simulated market's training split, its vocabulary and text vectors, module + datamodule."""
    t = simulate(SimConfig(n_users=args.users, seed=args.seed)).tables
    sp = time_split(t["offers"])
    offers = t["offers"].iloc[sp.train].reset_index(drop=True)
    items = t["items"].reset_index(drop=True)
    events = t["events"]
    queries = events.loc[events[S.EVENT_TYPE].astype(str) == S.SEARCH, S.QUERY]
    vocab = Vocab.build(items, queries.dropna().astype(str).unique().tolist())
    enc = TextEncoder(args.text_encoder, cfg["text_cache_dir"])
    item_text = np.zeros((len(vocab.item_ids) + 1, enc.dim), np.float32)
    item_text[1:] = enc.encode(item_texts(items))
    query_text = np.zeros((len(vocab.queries) + 1, enc.dim), np.float32)
    query_text[1:] = enc.encode(vocab.queries).reshape(-1, enc.dim)
    pl.seed_everything(args.seed)
    module = PriceResponseModule(
        n_items=len(vocab.item_ids),
        n_categories=len(vocab.categories),
        n_queries=len(vocab.queries),
        text_dim=enc.dim,
        **{k: cfg[k] for k in BertConfig.ARCH},
    )
    module.set_text_vectors(
        torch.from_numpy(item_text),
        torch.from_numpy(vocab.item_category),
        torch.from_numpy(query_text),
    )
    dm = PriceDataModule(
        offers,
        None,
        events,
        vocab,
        max_len=int(cfg["max_len"]),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        pin_memory=args.device == "cuda",
        seed=args.seed,
        trim_padding=bool(cfg["trim_padding"]),
    )
    dm.setup("fit")
    return module, dm


class _Clock(pl.Callback):
    """Starts the clock after `warmup` optimizer steps and stops it after `warmup + steps`."""

    def __init__(self, device: str, warmup: int, loader: TimedLoader) -> None:
        self.device, self.warmup, self.loader = device, warmup, loader
        self.t0 = self.t1 = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            _sync(self.device)
            self.loader.reset()
            self.t0 = time.perf_counter()
        elif trainer.global_step == trainer.max_steps:
            _sync(self.device)
            self.t1 = time.perf_counter()


def run_lightning(
    args: argparse.Namespace, module: PriceResponseModule, dm: PriceDataModule
) -> dict[str, float]:
    loader = TimedLoader(dm.train_dataloader())
    clock = _Clock(args.device, args.warmup, loader)
    if args.compile:
        module.compile_net()
    trainer = pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=loader)
    return _figures(clock.t1 - clock.t0, loader, args.steps)


def run_plain(
    args: argparse.Namespace, module: PriceResponseModule, dm: PriceDataModule
) -> dict[str, float]:
    """The same step by hand: to device, forward, BCE, backward, AdamW, LR schedule."""
    device = torch.device(args.device)
    module = module.to(device).train()
    net = torch.compile(module.net) if args.compile else module.net
    opt, sched = module.build_optimizer(args.warmup + args.steps)
    loader = TimedLoader(dm.train_dataloader())
    bf16 = args.precision == "bf16-mixed"
    step, t0, epoch = 0, 0.0, 0
    while step < args.warmup + args.steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                a, b = net(batch)
                logit = module.net.logit(a, b, batch["lpr"]).float()
            loss = F.binary_cross_entropy_with_logits(logit, batch["label"].float())
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == args.warmup:
                _sync(args.device)
                loader.reset()
                t0 = time.perf_counter()
            if step == args.warmup + args.steps:
                break
        epoch += 1
    _sync(args.device)
    return _figures(time.perf_counter() - t0, loader, args.steps)


def _figures(seconds: float, loader: TimedLoader, steps: int) -> dict[str, float]:
    # The loader runs one batch ahead of the step in Lightning; over many steps that is noise.
    return {
        "seconds": seconds,
        "steps": steps,
        "samples_per_s": loader.samples / seconds,
        "history_tokens_per_s": loader.tokens / seconds,
        "padded_tokens_per_s": loader.padded / seconds,
        "padding_share": 1.0 - loader.tokens / max(loader.padded, 1),
        "dataloader_wait_share": loader.wait_s / seconds,
    }


def step_flops(module: PriceResponseModule, batch: dict[str, torch.Tensor], precision: str) -> int:
    """FLOPs of one forward + backward of the network on `batch`, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    bf16 = precision == "bf16-mixed"
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(batch["lpr"].device.type, dtype=torch.bfloat16, enabled=bf16):
        a, b = module.net(batch)
        module.net.logit(a, b, batch["lpr"]).float().sum().backward()
    module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def trim_check(module: PriceResponseModule, dm: PriceDataModule) -> float:
    """Max |logit| difference between a padded and a trimmed batch (eval mode: no dropout)."""
    batcher = dm.train_batcher
    assert batcher is not None
    idx = np.arange(min(len(batcher), 512))
    trim = batcher.trim
    with torch.inference_mode():
        batcher.trim = False
        full = module.cpu().eval()(batcher(idx))
        batcher.trim = True
        cut = module(batcher(idx))
    batcher.trim = trim
    module.train()
    return float((full - cut).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/bert-tiny.yaml")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", default=None, help="32-true | bf16-mixed (default by device)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--users", type=int, default=2000, help="simulated users (SimConfig default)")
    ap.add_argument("--num-workers", type=int, default=None, help="default: the config's")
    ap.add_argument("--text-encoder", choices=["tiny", "minilm"], default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    raw = yaml.safe_load(Path(args.config).read_text()).get("bert", {}) or {}
    cfg = BertConfig.model_validate(raw).model_dump()
    args.batch_size = args.batch_size or int(cfg["batch_size"])
    args.num_workers = int(cfg["num_workers"] if args.num_workers is None else args.num_workers)
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    if args.device == "cuda":
        torch.set_float32_matmul_precision("high")

    module, dm = build(args, cfg)
    init = {k: v.clone() for k, v in module.state_dict().items()}
    out: dict[str, Any] = {
        "config": args.config,
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "precision": args.precision,
        "compile": args.compile,
        "batch_size": args.batch_size,
        "max_len": int(cfg["max_len"]),
        "d_model": int(cfg["d_model"]),
        "n_layers": int(cfg["n_layers"]),
        "n_params": sum(p.numel() for p in module.parameters()),
        "train_offers": len(dm.train_batcher or []),
        "num_workers": args.num_workers,
        "warmup_steps": args.warmup,
    }
    results = {}
    for name, fn in (("plain", run_plain), ("lightning", run_lightning)):
        module.load_state_dict(init)
        results[name] = fn(args, module, dm)
    module.compile_net(False)
    out["plain"], out["lightning"] = results["plain"], results["lightning"]
    out["lightning_vs_plain"] = (
        results["lightning"]["samples_per_s"] / results["plain"]["samples_per_s"]
    )

    # Padding: the same plain loop with each batch cut to its longest history.
    module.load_state_dict(init)
    out["trim_max_abs_logit_diff"] = trim_check(module, dm)
    assert dm.train_batcher is not None
    trim = dm.train_batcher.trim
    dm.train_batcher.trim = not trim
    module.load_state_dict(init)
    other = run_plain(args, module, dm)
    dm.train_batcher.trim = trim
    key = "plain_untrimmed" if trim else "plain_trimmed"
    out[key] = other
    trimmed, padded = (results["plain"], other) if trim else (other, results["plain"])
    out["trim_padding_speedup"] = trimmed["samples_per_s"] / padded["samples_per_s"]

    # FLOPs of the measured (padded or trimmed, as configured) step, on one batch.
    device = torch.device(args.device)
    module = module.to(device).train()
    batch = next(iter(dm.train_dataloader()))
    flops = step_flops(module, {k: v.to(device) for k, v in batch.items()}, args.precision)
    steps_per_s = results["lightning"]["steps"] / results["lightning"]["seconds"]
    out["flops_per_step"] = flops
    out["achieved_tflops_lightning"] = flops * steps_per_s / 1e12
    out["mfu_lightning"] = flops * steps_per_s / H200_BF16_FLOPS if args.device == "cuda" else None
    plain_sps = results["plain"]["steps"] / results["plain"]["seconds"]
    out["mfu_plain"] = flops * plain_sps / H200_BF16_FLOPS if args.device == "cuda" else None
    out["goals"] = {
        "lightning_vs_plain>=0.95": out["lightning_vs_plain"] >= 0.95,
        "dataloader_wait_share<=0.02": results["lightning"]["dataloader_wait_share"] <= 0.02,
    }
    out["provenance"] = bench_provenance("train_throughput", args)
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
