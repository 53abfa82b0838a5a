"""Search keywords that reveal price sensitivity, learned from a shop's own training data.

A query term (a word or a two-word phrase) is a "cheap" keyword when the users who searched it pay,
on average, a lower share of list price than users in general, and a "premium" keyword when they
pay a higher share; a term qualifies only when enough distinct users searched it and the gap is
several standard errors wide. Nothing here knows any vocabulary: the words come from the events
passed to `QueryKeywords.fit` (a model passes its training events only), so they work in any
language and never copy the simulator's phrasebook. The fitted object is small and JSON-serializable,
and is saved with the model that uses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pricing import schema as S

_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(query: str) -> set[str]:
    """The terms of one query: its lower-cased words and every pair of adjacent words.

    Pairs catch phrases whose words are ambiguous alone ("best price" against "best").
    """
    words = _WORD.findall(str(query).lower())
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:], strict=False)}


def user_paid_ratio(events: pd.DataFrame, items: pd.DataFrame) -> pd.Series:
    """Per user: mean log(paid price / list price) over their purchase events (users who bought)."""
    buys = events[events[S.EVENT_TYPE].astype(str) == S.PURCHASE]
    lp = items.assign(**{S.ITEM_ID: items[S.ITEM_ID].astype(str)}).set_index(S.ITEM_ID)
    list_price = buys[S.ITEM_ID].astype(str).map(lp[S.LIST_PRICE].astype(float))
    ratio = np.log(buys[S.PRICE].astype(float).to_numpy() / list_price.to_numpy(float))
    frame = pd.DataFrame({S.USER_ID: buys[S.USER_ID].astype(str).to_numpy(), "r": ratio})
    frame = frame[np.isfinite(frame["r"])]
    return frame.groupby(S.USER_ID)["r"].mean()


def _drop_redundant(z: pd.Series) -> pd.Series:
    """Drop two-word terms holding a kept single word: they flag no query the word does not."""
    words = {t for t in z.index if " " not in t}
    keep = [t for t in z.index if " " not in t or not set(t.split(" ")) & words]
    return z.loc[keep]


@dataclass(frozen=True)
class QueryKeywords:
    """Learned cheap and premium query terms, with the evidence for each.

    Attributes:
        cheap: terms whose searchers pay a lower share of list price (strongest first).
        premium: terms whose searchers pay a higher share of list price (strongest first).
        scores: each kept term's z-score (negative: cheap), for diagnostics.
    """

    cheap: tuple[str, ...] = ()
    premium: tuple[str, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        events: pd.DataFrame,
        items: pd.DataFrame,
        min_users: int = 20,
        min_z: float = 3.0,
        max_terms: int = 25,
    ) -> QueryKeywords:
        """Learn keywords from `events` (pass training events only) and the catalog's list prices.

        Args:
            events: contract events; searches give the terms, purchases the users' paid ratios.
            items: the catalog (list prices).
            min_users: a term needs this many distinct searchers who also bought something.
            min_z: |z| a term's mean paid ratio must reach against all buyers' (z = gap / SE).
            max_terms: at most this many terms of each kind, the strongest kept.
        """
        paid = user_paid_ratio(events, items)
        searches = events[events[S.EVENT_TYPE].astype(str) == S.SEARCH]
        if len(paid) < 2 or not len(searches) or S.QUERY not in searches:
            return cls()
        mean, sd = float(paid.mean()), float(paid.std(ddof=1))
        if not np.isfinite(sd) or sd <= 0:
            return cls()
        pairs = searches[[S.USER_ID, S.QUERY]].dropna().astype(str).drop_duplicates()
        terms_of = {q: query_terms(q) for q in pairs[S.QUERY].unique()}
        rows = [
            (u, t)
            for u, q in zip(pairs[S.USER_ID], pairs[S.QUERY], strict=True)
            for t in terms_of[q]
        ]
        if not rows:
            return cls()
        ut = pd.DataFrame(rows, columns=[S.USER_ID, "term"]).drop_duplicates()
        ut["r"] = ut[S.USER_ID].map(paid)
        ut = ut.dropna(subset=["r"])
        stats = ut.groupby("term")["r"].agg(["mean", "size"])
        stats = stats[stats["size"] >= min_users]
        z = (stats["mean"] - mean) / (sd / np.sqrt(stats["size"]))
        # Order by strength, then by term: ties never depend on hash order.
        z = z.iloc[np.lexsort((z.index.to_numpy(str), -z.abs().to_numpy()))]
        cheap = _drop_redundant(z[z <= -min_z]).head(max_terms)
        premium = _drop_redundant(z[z >= min_z]).head(max_terms)
        scores = {str(k): float(v) for k, v in pd.concat([cheap, premium]).items()}
        return cls(tuple(map(str, cheap.index)), tuple(map(str, premium.index)), scores)

    def flags(self, queries: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Per query: whether it holds a cheap term, and whether it holds a premium term."""
        q = pd.Series(list(queries), dtype=object).fillna("").astype(str)
        if not len(q) or not (self.cheap or self.premium):
            return np.zeros(len(q), bool), np.zeros(len(q), bool)
        cheap, premium = set(self.cheap), set(self.premium)
        uniq = q.unique()
        terms = [query_terms(x) for x in uniq]
        is_cheap = pd.Series([bool(t & cheap) for t in terms], index=uniq)
        is_premium = pd.Series([bool(t & premium) for t in terms], index=uniq)
        return q.map(is_cheap).to_numpy(bool), q.map(is_premium).to_numpy(bool)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what the model saves)."""
        return {"cheap": list(self.cheap), "premium": list(self.premium), "scores": self.scores}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> QueryKeywords:
        """Read `to_dict`'s output (None: no keywords)."""
        d = d or {}
        return cls(
            tuple(d.get("cheap", ())),
            tuple(d.get("premium", ())),
            {str(k): float(v) for k, v in d.get("scores", {}).items()},
        )
