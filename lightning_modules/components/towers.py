"""The two-tower price-response network: item tower, user tower (a small transformer), price head.

    logit(u, i, p) = a(u, i) - b(u, i) * log(p / list_price_i),   b = softplus(.) >= 0,

so predicted demand can never rise with price, whatever the weights. Text enters as precomputed
vectors held in buffers (item texts, the query vocabulary). With fine-tuning, the item tower trains
copies of MiniLM's top layers (`TextTop`) over their cached inputs; `bake_text` writes what they
produce into the buffer, so evaluation, saving and serving read vectors, never a BERT layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.sequences import N_EVENT_TYPES, N_GAP_BUCKETS


def price_inputs(lpr: Tensor, has_price: Tensor) -> Tensor:
    """Per-token price features: log(price/list), its discount and markup parts, and a flag."""
    return torch.stack([lpr, F.relu(-lpr), F.relu(lpr), has_price.to(lpr.dtype)], dim=-1)


class TextTop(nn.Module):
    """MiniLM's top layers, trained with the network, over their cached inputs (one row per item).

    `hidden` (n_items + 1, T, H) float16 and `mask` (n_items + 1, T) are what the top layers read
    (`TextEncoder.top_inputs`; row 0, the unknown item, is empty and pools to zeros). They stay in
    host memory, outside the state dict and the buffers DDP broadcasts: a step copies only the
    rows it reads to the layers' device. Only the layers' weights are state.
    """

    def __init__(self, layers: nn.ModuleList, hidden: Tensor, mask: Tensor) -> None:
        super().__init__()
        self.layers = layers
        self.hidden = hidden.to(torch.float16).cpu()
        self.mask = mask.to(torch.bool).cpu()

    @classmethod
    def for_items(cls, encoder: Any, texts: Sequence[str], layers: int) -> TextTop:
        """`encoder`'s top `layers` layers over the item texts, row i + 1 for text i (row 0: none).

        `encoder` is a `mlops.text.TextEncoder` (`top_inputs`, `top_layers`).
        """
        hidden, mask = encoder.top_inputs(texts, layers)
        pad_h = np.zeros((1, *hidden.shape[1:]), hidden.dtype)
        pad_m = np.zeros((1, mask.shape[1]), bool)
        return cls(
            encoder.top_layers(layers),
            torch.from_numpy(np.concatenate([pad_h, hidden])),
            torch.from_numpy(np.concatenate([pad_m, mask])),
        )

    def forward(self, rows: Tensor) -> Tensor:
        """Mean-pooled vectors (len(rows), H) of these items' texts."""
        device = next(self.layers.parameters()).device
        rows = rows.cpu()
        mask = self.mask[rows]
        width = max(int(mask.sum(1).max()), 1) if len(rows) else 1  # right-padded: trim
        mask = mask[:, :width].to(device)
        h = self.hidden[rows, :width].to(device).float()
        keep = mask.unsqueeze(-1).to(h.dtype)
        # Additive mask: padded keys get the dtype's lowest value (as BERT's own mask does).
        bias = (~mask)[:, None, None, :].to(h.dtype) * torch.finfo(h.dtype).min
        for layer in self.layers:
            h = layer(h, attention_mask=bias)
            if isinstance(h, tuple):  # older transformers return (hidden, ...)
                h = h[0]
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class ItemTower(nn.Module):
    """Item vector = projected frozen text vector + item-id embedding + category embedding.

    Row 0 of the id table is the shared "unknown item" (items outside the training catalog).
    Cold start: an item the training data never showed (`item_seen` 0) has no id embedding, so its
    vector is its text and category alone; `id_dropout` drops the id embedding of that share of
    items in training, so the text and category learn to carry an item by themselves.
    """

    item_text: Tensor  # buffers: (n_items + 1, text_dim) frozen text vectors, and category codes
    item_category: Tensor
    item_seen: Tensor  # (n_items + 1,) 1 where training data showed the item, else 0

    def __init__(
        self, n_items: int, n_categories: int, text_dim: int, d_model: int, id_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.id_dropout = id_dropout
        self.register_buffer("item_text", torch.zeros(n_items + 1, text_dim))
        self.register_buffer("item_category", torch.zeros(n_items + 1, dtype=torch.long))
        self.register_buffer("item_seen", torch.ones(n_items + 1))
        self.text_proj = nn.Linear(text_dim, d_model)
        self.id_emb = nn.Embedding(n_items + 1, d_model)
        self.cat_emb = nn.Embedding(n_categories + 1, d_model)
        self.norm = nn.LayerNorm(d_model)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        nn.init.normal_(self.cat_emb.weight, std=0.02)
        self.text_top: TextTop | None = None
        self.text_top_items = 0  # items per training step through the text top (0: all)

    @property
    def finetuning(self) -> bool:
        """True while training with a fine-tuned text top (text vectors come from `text_top`)."""
        return self.text_top is not None and self.training

    def attach_text_top(self, top: TextTop, items_per_step: int = 0) -> None:
        """Train these top text layers with the network (`bake_text` + `detach_text_top` after).

        `items_per_step` > 0 bounds the cost of a step: that many of the batch's items (drawn at
        random) go through the layers, with gradient; the others read their latest vectors from
        the buffer, which every pass through the layers refreshes (a memory bank).
        """
        self.text_top = top
        self.text_top_items = int(items_per_step)

    def detach_text_top(self) -> None:
        """Drop the text layers (after `bake_text`): the tower is a plain vector-table tower again."""
        self.text_top = None

    @torch.no_grad()
    def bake_text(self, chunk: int = 512) -> None:
        """Write the text top's current vectors for every item into the `item_text` buffer."""
        top = self.text_top
        if top is None:
            return
        was = top.training
        top.eval()  # no dropout in the vectors evaluation and serving read
        rows = torch.arange(self.item_text.shape[0], device=self.item_text.device)
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            self.item_text[part] = top(part).to(self.item_text.dtype)
        top.train(was)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Models saved before the cold-start flag: every item counts as seen (as they served).
        state_dict.setdefault(prefix + "item_seen", torch.ones_like(self.item_seen))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def text_vectors(self, idx: Tensor) -> Tensor:
        """Text vectors (..., text_dim) of items `idx`: the buffer's, or the text top's in training."""
        if not self.finetuning:
            return self.item_text[idx]
        assert self.text_top is not None
        rows, inverse = torch.unique(idx, return_inverse=True)  # each item's text once per step
        k = self.text_top_items
        if k and len(rows) > k:
            pick = torch.randperm(len(rows), device=rows.device)[:k]
            fresh = self.text_top(rows[pick])
            vec = self.item_text[rows].index_put((pick,), fresh.to(self.item_text.dtype))
            live = rows[pick]
        else:
            vec = fresh = self.text_top(rows)
            live = rows
        with torch.no_grad():
            self.item_text[live] = fresh.detach().to(self.item_text.dtype)
        return vec[inverse]

    def forward(self, idx: Tensor, text: Tensor | None = None) -> Tensor:
        """Item vectors (..., d); `text` gives the items' text vectors when already computed."""
        text = self.text_proj(self.text_vectors(idx) if text is None else text)
        keep = self.item_seen[idx]
        if self.training and self.id_dropout > 0:
            keep = keep * (torch.rand_like(keep) >= self.id_dropout).to(keep.dtype)
        ids = self.id_emb(idx) * keep.unsqueeze(-1).to(text.dtype)
        return self.norm(text + ids + self.cat_emb(self.item_category[idx]))


class UserTower(nn.Module):
    """A transformer over the user's last L events, pooled (CLS + masked mean) into one vector.

    Token = item vector (or a learned "no item" vector) + event type + price features + time-gap
    bucket + recency position + projected query text (searches only). An empty history still works:
    the CLS token alone is never masked.
    """

    def __init__(
        self,
        d_model: int,
        text_dim: int,
        n_layers: int,
        n_heads: int,
        max_len: int,
        dropout: float = 0.1,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.type_emb = nn.Embedding(N_EVENT_TYPES, d_model)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, d_model)
        self.pos_emb = nn.Embedding(max_len, d_model)
        self.price_proj = nn.Sequential(
            nn.Linear(4, d_model), nn.GELU(), nn.Linear(d_model, d_model)
        )
        self.query_proj = nn.Linear(text_dim, d_model)
        self.no_item = nn.Parameter(torch.randn(d_model) * 0.02)
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=ff_mult * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(2 * d_model, d_model)

    def forward(
        self,
        item_vec: Tensor,  # (B, L, d) item-tower vectors (anything where has_item is False)
        has_item: Tensor,  # (B, L) bool
        etype: Tensor,  # (B, L) long
        lpr: Tensor,  # (B, L) float, 0 where no price
        gap: Tensor,  # (B, L) long bucket
        query_vec: Tensor,  # (B, L, d) query text, already projected to d_model
        has_query: Tensor,  # (B, L) bool
        mask: Tensor,  # (B, L) bool, True for real events (left-padded: newest last)
    ) -> Tensor:
        b, length = etype.shape
        pos = torch.arange(length - 1, -1, -1, device=etype.device).clamp(max=self.max_len - 1)
        item = torch.where(has_item.unsqueeze(-1), item_vec, self.no_item.to(item_vec.dtype))
        has_price = has_item & mask
        tok = (
            item
            + self.type_emb(etype)
            + self.gap_emb(gap)
            + self.pos_emb(pos).unsqueeze(0)
            + self.price_proj(price_inputs(lpr, has_price))
            + query_vec * has_query.unsqueeze(-1).to(item_vec.dtype)
        )
        tok = tok * mask.unsqueeze(-1).to(tok.dtype)
        x = torch.cat([self.cls.to(tok.dtype).expand(b, 1, -1), tok], dim=1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=mask.device), ~mask], dim=1)
        h = self.norm(self.encoder(x, src_key_padding_mask=pad))
        m = mask.unsqueeze(-1).to(h.dtype)
        mean = (h[:, 1:] * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.out(torch.cat([h[:, 0], mean], dim=-1))


PRICE_HEADS = ("mlp", "user_category")
LOG_B_LIMIT = 8.0  # the user_category head's |log b| cap: b in [3e-4, 3e3], never 0 or inf


class PriceHead(nn.Module):
    """(a, b) of the demand curve from [u, i, u*i] (+ the wide features w); b = softplus(.) >= 0
    makes demand monotone.

    With `n_wide` > 0 (wide & deep) the offer's standardized tabular features, the ones the
    baselines read except the price, join the head's input: [u, i, u*i, w]. The price still enters
    only through the monotone term, so no feature can make demand rise with price.
    """

    scale: Tensor  # buffer: the temperature's inverse (1 until `calibrate` sets it)

    def __init__(
        self,
        d_model: int,
        hidden: int,
        a_init: float = -2.0,
        b_init: float = 2.0,
        n_wide: int = 0,
        form: str = "mlp",
        n_categories: int = 0,
        n_user_wide: int = 0,
    ) -> None:
        super().__init__()
        if form not in PRICE_HEADS:
            raise ValueError(f"unknown price head {form!r}: one of {PRICE_HEADS}")
        if not 0 <= n_user_wide <= n_wide:
            raise ValueError(f"n_user_wide must be in [0, n_wide={n_wide}], got {n_user_wide}")
        self.n_wide, self.form, self.n_user_wide = n_wide, form, n_user_wide
        self.register_buffer("scale", torch.ones(()))

        def mlp(bias: float) -> nn.Sequential:
            net = nn.Sequential(
                nn.Linear(3 * d_model + n_wide, hidden), nn.GELU(), nn.Linear(hidden, 1)
            )
            out = net[-1]
            assert isinstance(out, nn.Linear)
            nn.init.constant_(out.bias, bias)
            return net

        self.a = mlp(a_init)
        if form == "mlp":
            self.b = mlp(math.log(math.expm1(b_init)))  # softplus(bias) = b_init at start
        else:
            # log b = log b_init + f(user vector, user's wide features) + e[item's category]
            self.b_user = nn.Sequential(
                nn.Linear(d_model + n_user_wide, hidden), nn.GELU(), nn.Linear(hidden, 1)
            )
            out = self.b_user[-1]
            assert isinstance(out, nn.Linear)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.b_category = nn.Embedding(n_categories + 1, 1)
            nn.init.zeros_(self.b_category.weight)
            self.log_b0 = nn.Parameter(torch.tensor(math.log(b_init)))

    def forward(
        self, u: Tensor, i: Tensor, wide: Tensor | None = None, category: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        parts = [u, i, u * i]
        if self.n_wide:
            if wide is None:
                raise ValueError(f"this head takes {self.n_wide} wide features per offer")
            parts.append(wide.to(u.dtype))
        z = torch.cat(parts, dim=-1)
        s = self.scale.to(z.dtype)
        if self.form == "mlp":
            b = F.softplus(self.b(z)).squeeze(-1)
        else:
            if category is None:
                raise ValueError("the user_category price head needs each offer's item category")
            uw = u
            if self.n_user_wide:
                assert wide is not None
                uw = torch.cat([u, wide[..., self.n_wide - self.n_user_wide :].to(u.dtype)], -1)
            log_b = self.log_b0.to(z.dtype) + self.b_user(uw).squeeze(-1)
            log_b = log_b + self.b_category(category).squeeze(-1).to(z.dtype)
            b = torch.exp(log_b.clamp(-LOG_B_LIMIT, LOG_B_LIMIT))
        return self.a(z).squeeze(-1) * s, b * s

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Models saved before calibration existed: no temperature (scale 1), as they served.
        state_dict.setdefault(prefix + "scale", torch.ones_like(self.scale))
        super()._load_from_state_dict(state_dict, prefix, *args)


class PriceResponseNet(nn.Module):
    """Item tower + user tower + price head, over index tensors built by the datamodule."""

    query_text: Tensor  # buffer: (n_queries + 1, text_dim) frozen query vectors, row 0 none

    def __init__(
        self,
        n_items: int,
        n_categories: int,
        n_queries: int,
        text_dim: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        max_len: int = 32,
        dropout: float = 0.1,
        head_hidden: int = 64,
        a_init: float = -2.0,
        ff_mult: int = 4,
        n_wide: int = 0,
        id_dropout: float = 0.0,
        price_head: str = "mlp",
        n_user_wide: int = 0,
    ) -> None:
        super().__init__()
        self.items = ItemTower(n_items, n_categories, text_dim, d_model, id_dropout)
        self.user = UserTower(d_model, text_dim, n_layers, n_heads, max_len, dropout, ff_mult)
        self.head = PriceHead(
            d_model,
            head_hidden,
            a_init=a_init,
            n_wide=n_wide,
            form=price_head,
            n_categories=n_categories,
            n_user_wide=n_user_wide,
        )
        self.register_buffer("query_text", torch.zeros(n_queries + 1, text_dim))  # row 0: none

    def user_vector(
        self,
        batch: dict[str, Tensor],
        query_table: Tensor | None = None,
        item_text: Tensor | None = None,
    ) -> Tensor:
        """User vectors (B, d) from event tensors; `query_table` overrides the cached vocabulary,
        `item_text` (B, L, text_dim) gives the history items' text vectors when already computed."""
        ev_item = batch["ev_item"]
        has_item = ev_item >= 0
        n_rows = self.items.item_text.shape[0]
        if item_text is not None:
            item_vec = self.items(ev_item.clamp(min=0), item_text)
        elif n_rows <= ev_item.numel():
            # Small catalog: run the tower once per item and gather, not once per token.
            table = self.items(torch.arange(n_rows, device=ev_item.device))
            item_vec = table[ev_item.clamp(min=0)]
        else:
            item_vec = self.items(ev_item.clamp(min=0))
        table = self.query_text if query_table is None else query_table
        q = batch["ev_query"]
        # Project the (small) query vocabulary once, then gather: not text_dim x d per token.
        projected = self.user.query_proj(table)
        return self.user(
            item_vec,
            has_item,
            batch["ev_type"],
            batch["ev_lpr"],
            batch["ev_gap"],
            projected[q],
            q > 0,
            batch["ev_mask"],
        )

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(a, b) per offer."""
        if not self.items.finetuning:
            u = self.user_vector(batch)
            return self.head(u, self.items(batch["item"]), batch.get("wide"), self.category(batch))
        # Fine-tuning: the text top runs once per step over every item the batch shows.
        history = batch["ev_item"].clamp(min=0)
        text = self.items.text_vectors(torch.cat([history.flatten(), batch["item"]]))
        n = history.numel()
        u = self.user_vector(batch, item_text=text[:n].view(*history.shape, -1))
        return self.head(
            u, self.items(batch["item"], text[n:]), batch.get("wide"), self.category(batch)
        )

    def category(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Each offer's item category code, for the user_category price head (None for mlp)."""
        return None if self.head.form == "mlp" else self.items.item_category[batch["item"]]

    @staticmethod
    def logit(a: Tensor, b: Tensor, lpr: Tensor) -> Tensor:
        return a - b * lpr
