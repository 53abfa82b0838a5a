"""Market simulator: the embedded default data source and the yardstick with ground truth.

It writes the four contract tables (items, events, offers, users) and keeps what no real shop
knows: each user's latent price sensitivity, taste, brand-tier affinity and shopping intents, and
the true demand

    P(u, i, p) = sigmoid(alpha(u, i) - beta(u, i) * log(p / list_price_i)),
    alpha(u, i) = intercept + user_alpha[u] + category_alpha[u, cat_i] + tier_alpha[u, tier_i]
                  + quality[i] + sum_k intent[u, k] * tag[i, k] * tag_alpha[k],
    beta(u, i)  = user_beta[u] * category_sensitivity[cat_i]
                  * exp(sum_k intent[u, k] * tag[i, k] * tag_log_beta[k])   (> 0).

Behaviour reveals the latent traits the way it would in a shop: deal seekers search "cheap
coffee", browse budget brands and buy mostly at discounted prices; insensitive users search
"premium coffee", browse premium brands and buy at any price. The logging policy randomizes the
price on a ladder around list price and records the propensity, so the offers are valid training
data and support off-policy evaluation. Everything is vectorized numpy and seeded.

Two presets (`SimConfig.preset(name)`, `pricing simulate --preset NAME`):

- ``realistic`` (the default, `SimConfig()`): where language matters.
  *Intents*: besides cheap / plain / premium, users hold latent needs (gift, bulk, healthy, eco)
  and search them in many phrasings ("cheap coffee", "coffee on sale", "best price coffee",
  "coffee gift set", "organic tea", "dog food family size", ...). *Item text with a true effect*:
  titles and descriptions carry words such as "gift box", "family size", "organic", "decaf",
  "grain-free", "refillable"; an item with a word of need k (`tag[i, k] = 1`) raises alpha and
  moves beta (`TAG_EFFECTS`) for users holding need k (`intent[u, k]` in [0.4, 1], else 0), and
  nobody else. The words exist only in the text: a model learns them by reading it. *Novelty in
  the test period*, all from `novelty_start` on: a held-out set of phrasings
  (`HELDOUT_TEMPLATES`) replaces the usual one in `unseen_phrasing_share` of searches and never
  occurs before; `cold_item_share` of the items arrive with only their text (no event, no offer
  before their arrival); `new_user_share` of the users arrive then too, with no history.
- ``classic``: the market before intents and novelty, reproduced exactly (same tables and
  truth for the same seed): no need intents, no tags, no held-out phrasings, no arrivals.

Placing the test split. `pricing.split.time_split` puts the test at the last `test_fraction`
(0.2) of the offers' time span, measured from the first to the last offer. `novelty_start` is an
upper bound of that boundary for `test_fraction = 1 - test_start_fraction` (0.8 by default): it
is computed from the earliest session and the end of the span, plus an hour for the last
sessions' tails, so whatever the market's size every held-out phrasing, cold item and new user
falls inside the split's test part (none in train or validation). Use the default split, or
`time_split(offers, test_start=truth.novelty_start)` for a test made of novelty-era offers only.
Cold items, new users and unseen phrasings are listed in the ground truth (`item_arrival_ms`,
`user_arrival_ms`, `heldout_queries`) for evaluation slices; no table carries them.

Large markets. `write_market_partitioned` (`pricing simulate --partitions P`) simulates and writes
a market in P buckets of users, one at a time, so memory holds one bucket, never the whole market:
events/, offers/ and users/ folders of Parquet parts (`pricing.io.read_table` reads them as one
table) and the ground truth in parts, which `load_ground_truth` reads back as one truth.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import pandas as pd

from pricing import schema as S
from pricing.io import SUFFIXES, atomic_path, part_name, write_part, write_table
from pricing.logistic import sigmoid

LOGGING_POLICY = "logging-ladder@1"
GROUND_TRUTH_DIR = "ground_truth"
_GT_FORMAT_VERSION = 2
_GT_PARTS_FORMAT_VERSION = 3  # item arrays in arrays.npz, user arrays in users/part-NNNNN.npz

Objective = Literal["profit", "revenue"]

# --- catalog vocabulary ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Category:
    """A product category: price level, how price-sensitive shoppers are in it, and its words."""

    name: str
    base_price: float
    sensitivity: float  # s_category, multiplies the user's beta
    popularity: float  # prior weight of the category in users' taste
    nouns: tuple[str, str, str]  # product types used in titles
    attributes: tuple[str, str, str, str]
    sizes: tuple[str, str, str]
    size_multipliers: tuple[float, float, float]
    queries: tuple[str, str, str]  # what shoppers type when they look for it


_CONSUMABLE = (1.0, 1.6, 2.6)
_DURABLE = (1.0, 1.15, 1.35)

CATEGORIES: tuple[_Category, ...] = (
    _Category("coffee", 8.0, 1.10, 1.3, ("arabica coffee beans", "ground coffee", "espresso capsules"),
              ("organic", "dark roast", "fair trade", "single origin"), ("250g", "500g", "1kg"),
              _CONSUMABLE, ("coffee", "coffee beans", "espresso")),
    _Category("tea", 5.0, 1.00, 0.8, ("green tea", "black tea", "herbal tea bags"),
              ("organic", "loose leaf", "decaf", "jasmine"), ("20 bags", "50 bags", "100 bags"),
              _CONSUMABLE, ("tea", "green tea", "herbal tea")),
    _Category("shampoo", 6.5, 1.20, 1.0, ("shampoo", "conditioner", "2-in-1 shampoo"),
              ("sulfate-free", "argan oil", "anti-dandruff", "volumizing"), ("250ml", "400ml", "1l"),
              _CONSUMABLE, ("shampoo", "conditioner", "hair care")),
    _Category("skincare", 16.0, 0.90, 0.9, ("face cream", "face serum", "sunscreen spf 50"),
              ("hydrating", "vitamin c", "fragrance-free", "retinol"), ("30ml", "50ml", "100ml"),
              _CONSUMABLE, ("face cream", "serum", "sunscreen")),
    _Category("headphones", 55.0, 0.85, 0.8, ("wireless earbuds", "over-ear headphones", "sports earphones"),
              ("noise cancelling", "bluetooth 5.3", "waterproof", "long battery"),
              ("standard", "plus", "max"), _DURABLE, ("headphones", "earbuds", "wireless headphones")),
    _Category("running shoes", 65.0, 0.90, 0.7, ("running shoes", "trail shoes", "training sneakers"),
              ("lightweight", "cushioned", "breathable", "wide fit"), ("road", "all-terrain", "racing"),
              _DURABLE, ("running shoes", "sneakers", "trail shoes")),
    _Category("cookware", 32.0, 1.00, 0.6, ("frying pan", "saucepan", "stock pot"),
              ("non-stick", "stainless steel", "cast iron", "induction-ready"), ("20cm", "24cm", "28cm"),
              _DURABLE, ("frying pan", "cookware", "saucepan")),
    _Category("dog food", 22.0, 1.30, 0.8, ("dry dog food", "puppy food", "grain-free kibble"),
              ("chicken", "salmon", "lamb and rice", "senior"), ("2kg", "6kg", "12kg"),
              _CONSUMABLE, ("dog food", "puppy food", "kibble")),
    _Category("vitamins", 12.0, 1.10, 0.7, ("multivitamin", "vitamin d3", "omega-3 capsules"),
              ("vegan", "high strength", "slow release", "gummy"), ("30 count", "90 count", "180 count"),
              _CONSUMABLE, ("vitamins", "multivitamin", "omega 3")),
    _Category("backpacks", 40.0, 0.90, 0.5, ("backpack", "laptop backpack", "hiking daypack"),
              ("water-resistant", "anti-theft", "recycled", "ergonomic"), ("15l", "25l", "35l"),
              _DURABLE, ("backpack", "laptop bag", "daypack")),
    _Category("olive oil", 9.0, 1.20, 0.7, ("extra virgin olive oil", "olive oil", "cooking oil spray"),
              ("cold pressed", "organic", "greek", "italian"), ("500ml", "750ml", "1l"),
              _CONSUMABLE, ("olive oil", "extra virgin olive oil", "cooking oil")),
    _Category("board games", 28.0, 0.90, 0.5, ("strategy board game", "family card game", "party game"),
              ("2-4 players", "cooperative", "award-winning", "travel edition"),
              ("standard", "deluxe box", "big box"), _DURABLE, ("board game", "card game", "family game")),
    _Category("laundry detergent", 10.0, 1.30, 0.8, ("laundry detergent", "washing pods", "fabric softener"),
              ("eco", "sensitive skin", "color care", "concentrated"), ("1l", "2l", "4l"),
              _CONSUMABLE, ("laundry detergent", "washing pods", "detergent")),
)  # fmt: skip

TIERS: tuple[str, ...] = ("budget", "mid", "premium")
_TIER_PRICE = np.array([0.65, 1.0, 1.6])
_TIER_WORDS: tuple[tuple[str, ...], ...] = (
    ("value", "basic", "everyday", "essentials"),
    ("classic", "original", "", ""),
    ("premium", "deluxe", "signature", "reserve"),
)
BRANDS: tuple[tuple[str, ...], ...] = (
    ("Valora", "Thrifty", "Kwik", "Savio", "Basix", "Pennywise", "Handy", "Simpla", "Dailo", "Econa"),
    ("Lumen", "Northway", "Harbor", "Brightly", "Cedar", "Orbit", "Tandem", "Vireo", "Kestrel", "Mosaic"),
    ("Aurelia", "Sterling", "Obsidian", "Halcyon", "Regalia", "Elysian", "Monarch", "Ivory", "Maison", "Vantor"),
)  # fmt: skip
_BRANDS_PER_TIER_IN_CATEGORY = 2

# Search phrasing by price attitude; {q} is the category's query noun.
_QUERY_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("cheap {q}", "{q} deal", "discount {q}", "{q} on sale", "budget {q}", "{q} coupon"),
    ("{q}", "{q}", "{q} reviews", "{q} near me", "{q}", "new {q}"),
    ("premium {q}", "best {q}", "luxury {q}", "top rated {q}", "high end {q}", "best {q}"),
)
QUERY_CLASSES: tuple[str, ...] = ("cheap", "plain", "premium")

# --- intents and item text with a true effect (the realistic preset) ----------------------------

# Needs a user may hold besides a price attitude; each shows in searches and in item words.
NEED_INTENTS: tuple[str, ...] = ("gift", "bulk", "healthy", "eco")
# What a search expresses: the price attitudes (classic order) and then the needs.
INTENTS: tuple[str, ...] = QUERY_CLASSES + NEED_INTENTS

# Phrasings per intent; {q} is the category's query noun. The usual set occurs all the time.
INTENT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "cheap": ("cheap {q}", "{q} on sale", "budget {q}", "best price {q}", "discount {q}",
              "{q} deal", "{q} coupon"),
    "plain": ("{q}", "{q} reviews", "{q} near me", "new {q}", "buy {q}"),
    "premium": ("premium {q}", "best {q}", "luxury {q}", "top rated {q}", "high end {q}"),
    "gift": ("{q} gift", "{q} gift set", "{q} gift idea", "{q} present", "birthday {q} gift"),
    "bulk": ("bulk {q}", "{q} family size", "{q} multipack", "{q} value pack", "large {q} pack"),
    "healthy": ("organic {q}", "healthy {q}", "natural {q}", "{q} no additives", "clean {q}"),
    "eco": ("eco friendly {q}", "sustainable {q}", "{q} recycled", "{q} plastic free",
            "ethical {q}"),
}  # fmt: skip
# Held-out phrasings: the same intents in words never used before `novelty_start`.
HELDOUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "cheap": ("affordable {q}", "low cost {q}", "{q} for less", "inexpensive {q}"),
    "plain": ("{q} online", "which {q} to buy", "{q} recommendations"),
    "premium": ("finest {q}", "top of the line {q}", "{q} worth the splurge",
                "professional grade {q}"),
    "gift": ("{q} hamper", "thank you present {q}", "{q} for a housewarming",
             "{q} stocking filler"),
    "bulk": ("stock up on {q}", "{q} wholesale", "jumbo {q}", "{q} economy size"),
    "healthy": ("chemical free {q}", "{q} without additives", "non toxic {q}", "wholesome {q}"),
    "eco": ("zero waste {q}", "environmentally friendly {q}", "planet friendly {q}",
            "{q} low carbon"),
}  # fmt: skip

# Words of each need in item text, per category (absent: the need does not apply there). An
# item's tag for need k is 1 exactly when its title holds one of these words, including the
# classic attribute and noun words that happen to be one ("organic", "decaf", "grain-free").
TAG_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "coffee": {"gift": ("gift box", "gift set"), "bulk": ("family size", "bulk pack"),
               "healthy": ("organic", "decaf"), "eco": ("fair trade", "compostable")},
    "tea": {"gift": ("gift box", "gift tin"), "bulk": ("family size", "value pack"),
            "healthy": ("organic", "decaf", "caffeine-free"), "eco": ("plastic-free", "fair trade")},
    "shampoo": {"gift": ("gift set",), "bulk": ("family size", "value pack"),
                "healthy": ("paraben-free", "natural"), "eco": ("refillable", "eco")},
    "skincare": {"gift": ("gift set", "gift box"), "bulk": ("value pack",),
                 "healthy": ("fragrance-free", "clean formula"),
                 "eco": ("refillable", "recycled packaging")},
    "headphones": {"gift": ("gift edition", "gift box"), "eco": ("recycled plastic",)},
    "running shoes": {"gift": ("gift box",), "eco": ("recycled", "vegan")},
    "cookware": {"gift": ("gift set",), "healthy": ("non-toxic", "pfas-free"),
                 "eco": ("recycled aluminium",)},
    "dog food": {"bulk": ("bulk bag", "value pack"), "healthy": ("grain-free", "natural"),
                 "eco": ("sustainable",)},
    "vitamins": {"bulk": ("value pack", "bulk pack"), "healthy": ("vegan", "sugar-free"),
                 "eco": ("plastic-free",)},
    "backpacks": {"gift": ("gift edition",), "eco": ("recycled",)},
    "olive oil": {"gift": ("gift tin", "gift box"), "bulk": ("family size", "bulk tin"),
                  "healthy": ("organic", "cold pressed"), "eco": ("sustainable",)},
    "board games": {"gift": ("gift edition", "gift box"), "eco": ("recycled cardboard",)},
    "laundry detergent": {"bulk": ("family size", "bulk pack"),
                          "healthy": ("sensitive skin", "hypoallergenic"),
                          "eco": ("eco", "refillable")},
}  # fmt: skip
# Needs whose words sit before the product noun ("decaf ... coffee"); the others follow the size.
_TAG_BEFORE_NOUN = frozenset({"healthy", "eco"})
_TAG_ADD_PROB = 0.55  # share of items given one extra need word (besides attribute words)

# True effect of a matching item word for a user holding the need, at strength 1: (change of
# alpha, change of log beta). Gift and health buyers pay up; bulk buyers compare unit prices.
TAG_EFFECTS: dict[str, tuple[float, float]] = {
    "gift": (0.9, -0.4),
    "bulk": (0.7, 0.3),
    "healthy": (1.0, -0.3),
    "eco": (0.8, -0.2),
}
# Prevalence of each need and how it leans with standardized sensitivity z (logit slope).
_NEED_PREVALENCE = np.array([0.2, 0.25, 0.3, 0.2])
_NEED_Z_SLOPE = np.array([-0.4, 0.5, -0.2, -0.3])
_NEED_STRENGTH = (0.4, 1.0)  # uniform strength of a held need
_NEED_SEARCH_WEIGHT = 2.0  # a need's weight against plain searches, times its strength
_INTENT_BROWSE_BONUS = 1.0  # browsing: items matching the session's searched intent
_NEED_BROWSE_BONUS = 0.8  # browsing: items matching the user's needs, times strength
_NEW_ITEM_BONUS = 0.7  # new arrivals are featured
# Need words raise holders' demand and holders browse matching items: the intercept gives that
# back, so the realistic market keeps the classic purchase rate (~10.5%).
_NEED_INTERCEPT_SHIFT = -0.2
_ARRIVAL_WINDOW = 0.5  # arrivals fall in the first half of [novelty_start, end]

# --- users -------------------------------------------------------------------------------------

SEGMENTS: tuple[str, ...] = ("insensitive", "regular", "deal_seeker")
_SEGMENT_PROBS = np.array([0.30, 0.45, 0.25])


def log_beta_moments(medians: tuple[float, ...], spreads: tuple[float, ...]) -> tuple[float, float]:
    """Mean and sd of log(beta) over the segment mixture: fixed by the market's config, so a user's
    standardized sensitivity does not depend on who else was sampled."""
    log_median, sigma = np.log(np.asarray(medians, float)), np.asarray(spreads, float)
    mean = float(_SEGMENT_PROBS @ log_median)
    return mean, float(np.sqrt(_SEGMENT_PROBS @ (sigma**2 + log_median**2) - mean**2))


# The realistic and classic markets' sensitivities (segment medians of beta, log-sds).
_REALISTIC_SENSITIVITY = (0.45, 2.2, 7.0)
_REALISTIC_SPREAD = (0.35, 0.30, 0.20)
_LOG_BETA_MEAN, _LOG_BETA_STD = log_beta_moments(_REALISTIC_SENSITIVITY, _REALISTIC_SPREAD)

AGE_GROUPS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_AGE_BASE_PROBS = np.array([0.12, 0.22, 0.21, 0.18, 0.15, 0.12])
# Young and retired shoppers lean price-sensitive: mild, so groups overlap heavily.
_AGE_SENSITIVITY_SLOPE = np.array([0.6, 0.25, -0.2, -0.4, -0.2, 0.35])
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
_REGION_PROBS = np.array([0.22, 0.24, 0.18, 0.20, 0.16])

# --- demand scales (tuned: ~11% purchase rate; many interior optima in 0.7x-1.3x list) ---------

_INTERCEPT = -3.1
_USER_ALPHA_SD = 0.35
_ALPHA_SENSITIVITY_SLOPE = -0.8  # deal seekers rarely buy at list price, insensitive users often
_TASTE_WEIGHT = 0.35
_TASTE_CLIP = (-3.0, 1.5)
_TIER_WEIGHT = 0.5
_TIER_SLOPE = 0.9  # how strongly sensitivity drives budget-over-premium affinity
_TIER_NOISE = 0.4
_QUALITY_SD = 0.3
_TASTE_CONCENTRATION = 0.5

# --- behaviour ---------------------------------------------------------------------------------

_HOUR_WEIGHTS = np.array(
    [
        1,
        0.6,
        0.4,
        0.3,
        0.3,
        0.5,
        1,
        2,
        3,
        3.5,
        3.5,
        4,
        4.5,
        4,
        3.5,
        3.5,
        4,
        4.5,
        5.5,
        6.5,
        7,
        6,
        4,
        2,
    ]
)
_FOCUS_SHARE = 0.7  # share of a session's views in its focus category
_N_CANDIDATES = 4  # random items per view before the tier-affinity Gumbel-max
_SEARCH_PROB = 0.65  # a session starts with a search
_SECOND_SEARCH_PROB = 0.25
_CLICK_BASE, _CLICK_SLOPE = 0.06, 0.6  # a non-buyer clicks with this + slope * P


def click_probability(p_buy: np.ndarray) -> np.ndarray:
    """P(a shopper clicks an item shown at a price they buy it at with probability `p_buy`): the
    simulator's funnel, for the closed loop's shoppers too."""
    return _CLICK_BASE + _CLICK_SLOPE * np.asarray(p_buy, dtype=float)


_CART_ABANDON = 0.2  # share of non-buying clickers who still add to cart


def funnel(
    p_buy: np.ndarray, u_buy: np.ndarray, u_click: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bought, clicked, carted) of items shown at prices bought with probability `p_buy`, from one
    uniform number per item and stage: the market's funnel (a buyer also clicks and carts; a
    non-buyer clicks with `click_probability`, and a fifth of those clickers add to cart), with
    the cart decided by the click's number so two numbers do (the loop pairs arms on them)."""
    p_click = click_probability(p_buy)
    bought = np.asarray(u_buy) < p_buy
    clicked = bought | (np.asarray(u_click) < p_click)
    carted = bought | (np.asarray(u_click) < _CART_ABANDON * p_click)
    return bought, clicked, carted


@dataclass(frozen=True)
class SimConfig:
    """Size, seed, logging policy and realism of a simulated market.

    Defaults (the ``realistic`` preset) give about 90k offers, 151k events and an 11% purchase
    rate for 2,000 users over six weeks (new users shop only in the last weeks);
    `SimConfig.preset("classic")`, the market without intents and novelty, gives 97k offers,
    163k events and 11%, table for table what it gave before the realistic preset.

    Args:
        sessions_per_user_week: mean sessions per user and week (users vary around it).
        offers_per_session: mean item views (each one an offer) per session, at least 1.
        ladder: price multipliers of list price the logging policy picks from.
        ladder_probs: the logging policy's probabilities for `ladder` (sum to 1).
        intents: users hold needs (gift, bulk, healthy, eco) that show in their searches, item
            text carries need words, and a matching word moves the user's true demand.
        test_start_fraction: where the test period starts as a share of the span; keep it at
            1 - the split's `test_fraction`. Novelty starts at the split's boundary or just after.
        unseen_phrasing_share: share of searches from `novelty_start` on that use a held-out
            phrasing (needs `intents`).
        cold_item_share: share of items that arrive after `novelty_start` (text only before).
        new_user_share: share of users whose first session is after `novelty_start`.
    """

    n_users: int = 2000
    n_items: int = 300
    n_days: int = 42
    seed: int = 0
    start: str = "2026-01-05"
    sessions_per_user_week: float = 2.5
    offers_per_session: float = 3.3
    ladder: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
    ladder_probs: tuple[float, ...] = (0.08, 0.10, 0.14, 0.36, 0.14, 0.10, 0.08)
    intents: bool = True
    test_start_fraction: float = 0.8
    unseen_phrasing_share: float = 0.3
    cold_item_share: float = 0.08
    new_user_share: float = 0.08
    segment_sensitivity: tuple[float, float, float] = (2.5, 3.4, 4.6)
    segment_spread: tuple[float, float, float] = (0.12, 0.12, 0.12)
    cost_share: tuple[float, float] = (0.50, 0.70)

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_days < 1:
            raise ValueError("n_users and n_days must be at least 1")
        if self.n_items < len(CATEGORIES):
            raise ValueError(f"n_items must be at least {len(CATEGORIES)} (one per category)")
        if len(self.ladder) != len(self.ladder_probs) or not self.ladder:
            raise ValueError("ladder and ladder_probs must have the same, non-zero length")
        if min(self.ladder) <= 0 or min(self.ladder_probs) <= 0:
            raise ValueError("ladder multipliers and their probabilities must be positive")
        if abs(sum(self.ladder_probs) - 1.0) > 1e-9:
            raise ValueError(f"ladder_probs must sum to 1, got {sum(self.ladder_probs)}")
        if self.sessions_per_user_week <= 0 or self.offers_per_session < 1:
            raise ValueError("sessions_per_user_week must be > 0 and offers_per_session >= 1")
        if not 0.0 < self.test_start_fraction < 1.0:
            raise ValueError("test_start_fraction must be in (0, 1)")
        for name in ("unseen_phrasing_share", "cold_item_share", "new_user_share"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if len(self.segment_sensitivity) != len(SEGMENTS) or min(self.segment_sensitivity) <= 0:
            raise ValueError(f"segment_sensitivity needs {len(SEGMENTS)} positive medians")
        if len(self.segment_spread) != len(SEGMENTS) or min(self.segment_spread) < 0:
            raise ValueError(f"segment_spread needs {len(SEGMENTS)} non-negative log-sds")
        lo, hi = self.cost_share
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"cost_share must be 0 <= low <= high < 1, got {self.cost_share}")
        if self.unseen_phrasing_share > 0 and not self.intents:
            raise ValueError("unseen_phrasing_share needs intents=True (held-out intent phrasings)")

    @classmethod
    def preset(cls, name: str = "shop", **overrides: Any) -> SimConfig:
        """The config of a named market (`PRESETS`), with `overrides` (sizes, seed, ...) on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown simulator preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def has_novelty(self) -> bool:
        """Whether anything happens only from `novelty_start` on (phrasings, items, users)."""
        return self.unseen_phrasing_share > 0 or self.cold_item_share > 0 or self.new_user_share > 0


# Named markets: "shop" is SimConfig()'s defaults; "realistic" is the same shop with a much wider
# spread of price sensitivity (down to shoppers who barely react to price) and costs; "classic" is
# the realistic market before intents and novelty, reproduced exactly for the same seed.
_WIDE_SENSITIVITY: dict[str, Any] = {
    "segment_sensitivity": _REALISTIC_SENSITIVITY,
    "segment_spread": _REALISTIC_SPREAD,
    "cost_share": (0.45, 0.75),
}
PRESETS: dict[str, dict[str, Any]] = {
    "shop": {},
    "realistic": dict(_WIDE_SENSITIVITY),
    "classic": {
        **_WIDE_SENSITIVITY,
        "intents": False,
        "unseen_phrasing_share": 0.0,
        "cold_item_share": 0.0,
        "new_user_share": 0.0,
    },
}
DEFAULT_PRESET = "shop"


# --- numerics ----------------------------------------------------------------------------------


def _as_float_array(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


@dataclass(eq=False)
class GroundTruth:
    """The simulator's latent truth: who the users are and the exact demand.

    Arrays are indexed by position in `user_ids` / `item_ids`; methods take string ids.
    """

    user_ids: np.ndarray  # (U,) str
    item_ids: np.ndarray  # (I,) str
    intercept: float
    user_beta: np.ndarray  # (U,) price sensitivity beta_u > 0
    user_segment: np.ndarray  # (U,) int8 index into `segments`
    user_alpha: np.ndarray  # (U,) user-level propensity to buy
    user_taste: np.ndarray  # (U, C) Dirichlet taste over categories
    category_alpha: np.ndarray  # (U, C) taste term of alpha
    tier_affinity: np.ndarray  # (U, T) brand-tier affinity (drives browsing)
    tier_alpha: np.ndarray  # (U, T) tier term of alpha
    user_age_group: np.ndarray  # (U,) int8 index into `age_groups`
    user_region: np.ndarray  # (U,) int8 index into `regions`
    item_category: np.ndarray  # (I,) int index into `categories`
    item_tier: np.ndarray  # (I,) int index into `tiers`
    item_quality: np.ndarray  # (I,)
    list_price: np.ndarray  # (I,)
    unit_cost: np.ndarray  # (I,)
    category_sensitivity: np.ndarray  # (C,) s_category
    categories: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
    tiers: tuple[str, ...] = TIERS
    segments: tuple[str, ...] = SEGMENTS
    age_groups: tuple[str, ...] = AGE_GROUPS
    regions: tuple[str, ...] = REGIONS
    # Needs and item words (realistic preset; K = 0 in the classic one, where they add nothing).
    needs: tuple[str, ...] = ()  # (K,) names of the need intents
    user_intent: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (U, K) strength
    item_tags: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (I, K) 0/1 words
    tag_alpha: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (K,)
    tag_log_beta: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (K,)
    # Arrivals: ms after the market's start when a user/item first exists (0: from the start).
    user_arrival_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    item_arrival_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Browsing prominence of each item (how often it wins a place on the page; not demand).
    item_popularity: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (I,)
    novelty_start: str | None = None  # ISO UTC time from which novelty may occur
    heldout_queries: tuple[str, ...] = ()  # phrasings that never occur before `novelty_start`
    # The market's design of price sensitivity: each segment's median beta and log-sd (the prior
    # of a user's beta; its moments standardize sensitivity for behaviour).
    segment_sensitivity: tuple[float, ...] = _REALISTIC_SENSITIVITY
    segment_spread: tuple[float, ...] = _REALISTIC_SPREAD
    _user_index: pd.Index = field(init=False, repr=False)
    _item_index: pd.Index = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._user_index = pd.Index(np.asarray(self.user_ids).astype(str))
        self._item_index = pd.Index(np.asarray(self.item_ids).astype(str))
        n_users, n_items, k = len(self.user_ids), len(self.item_ids), len(self.needs)
        # Empty defaults take the market's shape, so a truth without needs or arrivals is valid.
        if np.size(self.user_intent) == 0:
            self.user_intent = np.zeros((n_users, k))
        if np.size(self.item_tags) == 0:
            self.item_tags = np.zeros((n_items, k))
        if np.size(self.tag_alpha) == 0:
            self.tag_alpha = np.zeros(k)
        if np.size(self.tag_log_beta) == 0:
            self.tag_log_beta = np.zeros(k)
        if np.size(self.user_arrival_ms) == 0:
            self.user_arrival_ms = np.zeros(n_users, dtype=np.int64)
        if np.size(self.item_arrival_ms) == 0:
            self.item_arrival_ms = np.zeros(n_items, dtype=np.int64)
        if np.size(self.item_popularity) == 0:
            self.item_popularity = np.zeros(n_items)
        expected = {
            "user_intent": (n_users, k),
            "item_tags": (n_items, k),
            "tag_alpha": (k,),
            "tag_log_beta": (k,),
            "user_arrival_ms": (n_users,),
            "item_arrival_ms": (n_items,),
            "item_popularity": (n_items,),
        }
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"{name} has shape {np.shape(getattr(self, name))}, want {shape}")

    # -- id -> position ---------------------------------------------------------------------------

    def user_index(self, user_ids: Any) -> np.ndarray:
        """Positions of `user_ids` (string ids); raises KeyError on an unknown id."""
        return self._lookup(self._user_index, user_ids, "user")

    def item_index(self, item_ids: Any) -> np.ndarray:
        """Positions of `item_ids` (string ids); raises KeyError on an unknown id."""
        return self._lookup(self._item_index, item_ids, "item")

    @staticmethod
    def _lookup(index: pd.Index, ids: Any, what: str) -> np.ndarray:
        flat: Any
        if isinstance(ids, pd.Series | pd.Index):
            flat, shape = ids, (len(ids),)
        else:
            arr = np.atleast_1d(np.asarray(ids))
            flat, shape = arr.ravel(), arr.shape
        # Look up each distinct id once: offers repeat users and items many times.
        codes, uniques = pd.factorize(flat)
        found = index.get_indexer(pd.Index(uniques))
        pos = np.where(codes >= 0, found[codes], -1).reshape(shape)
        if (pos < 0).any():
            unknown = np.asarray(flat, dtype=object).reshape(shape)[pos < 0][:5].tolist()
            raise KeyError(f"unknown {what} id(s) for the ground truth: {unknown}")
        return pos

    # -- demand ----------------------------------------------------------------------------------

    def params_idx(self, u: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) of the demand curve for user/item positions `u`, `i`."""
        cat = self.item_category[i]
        alpha = (
            self.intercept
            + self.user_alpha[u]
            + self.category_alpha[u, cat]
            + self.tier_alpha[u, self.item_tier[i]]
            + self.item_quality[i]
        )
        beta = self.user_beta[u] * self.category_sensitivity[cat]
        if len(self.needs):
            # A need word moves demand only for users holding that need (intent 0 otherwise).
            match = self.user_intent[u] * self.item_tags[i]
            alpha = alpha + match @ self.tag_alpha
            beta = beta * np.exp(match @ self.tag_log_beta)
        return alpha, beta

    def demand_params(self, user_ids: Any, item_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) per pair: P = sigmoid(alpha - beta * log(price / list_price))."""
        return self.params_idx(self.user_index(user_ids), self.item_index(item_ids))

    def _prob_idx(self, u: np.ndarray, i: np.ndarray, prices: np.ndarray) -> np.ndarray:
        alpha, beta = self.params_idx(u, i)
        return _prob(alpha, beta, self.list_price[i], prices)

    def purchase_probability(self, user_ids: Any, item_ids: Any, prices: Any) -> np.ndarray:
        """True P(purchase) per pair at `prices`.

        Args:
            user_ids, item_ids: string ids of shape (n,).
            prices: shape (n,) (one price per pair), (n, G) (a grid per pair) or a scalar.
                Must be positive.

        Returns:
            Probabilities with the shape of `prices` ((n,) for a scalar price).
        """
        u, i = self.user_index(user_ids), self.item_index(item_ids)
        return self._prob_idx(u, i, _as_float_array(prices))

    def expected_value(
        self,
        user_ids: Any,
        item_ids: Any,
        prices: Any,
        unit_cost: Any = None,
        objective: Objective = "profit",
    ) -> np.ndarray:
        """Exact expected profit ((p - c) * P) or revenue (p * P) per pair at `prices`.

        `unit_cost` defaults to the items' true unit cost; shapes as in `purchase_probability`.
        """
        u, i = self.user_index(user_ids), self.item_index(item_ids)
        p = _as_float_array(prices)
        prob = self._prob_idx(u, i, p)
        c = self._cost(i, unit_cost, objective)
        return (p - _expand(c, p)) * prob

    def _cost(self, i: np.ndarray, unit_cost: Any, objective: Objective) -> np.ndarray:
        if objective == "revenue":
            return np.zeros(len(i))
        if objective != "profit":
            raise ValueError(f"objective must be 'profit' or 'revenue', got {objective!r}")
        if unit_cost is None:
            return self.unit_cost[i]
        return np.broadcast_to(_as_float_array(unit_cost), (len(i),)).astype(np.float64)

    def oracle(
        self,
        user_ids: Any,
        item_ids: Any,
        low: Any,
        high: Any,
        unit_cost: Any = None,
        objective: Objective = "profit",
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact best price in [low, high] per pair and its expected profit (or revenue).

        With this demand, d profit / dp = P * g(p) with g(p) = 1 - beta (1 - c/p)(1 - P(p)).
        g > 0 for p <= c and g is strictly decreasing for p > c, so profit is unimodal: the
        optimum is `high` if g(high) >= 0, `low` if g(low) <= 0, else the root of g, found by
        vectorized bisection to machine precision. Revenue is the case c = 0.

        Args:
            low, high: price bounds, scalars or shape (n,), 0 < low <= high.
            unit_cost: defaults to the items' true unit cost (ignored for revenue).
            objective: "profit" or "revenue".

        Returns:
            (price, expected_value), each of shape (n,).
        """
        u, i = self.user_index(user_ids), self.item_index(item_ids)
        n = len(u)
        lo = np.broadcast_to(_as_float_array(low), (n,)).astype(np.float64)
        hi = np.broadcast_to(_as_float_array(high), (n,)).astype(np.float64)
        if (lo <= 0).any() or (lo > hi).any():
            raise ValueError("oracle needs 0 < low <= high for every pair")
        c = self._cost(i, unit_cost, objective)
        alpha, beta = self.params_idx(u, i)
        lp = self.list_price[i]

        def g(p: np.ndarray) -> np.ndarray:
            one_minus_p = sigmoid(beta * np.log(p / lp) - alpha)
            return 1.0 - beta * (1.0 - c / p) * one_minus_p

        g_lo, g_hi = g(lo), g(hi)
        price = np.where(g_hi >= 0, hi, lo)
        inner = (g_hi < 0) & (g_lo > 0)
        if inner.any():
            a, b = lo[inner], hi[inner]
            beta_in, alpha_in, lp_in, c_in = beta[inner], alpha[inner], lp[inner], c[inner]
            for _ in range(200):  # ~55 halvings reach float64 resolution
                mid = 0.5 * (a + b)
                one_minus_p = sigmoid(beta_in * np.log(mid / lp_in) - alpha_in)
                positive = 1.0 - beta_in * (1.0 - c_in / mid) * one_minus_p > 0
                a = np.where(positive, mid, a)
                b = np.where(positive, b, mid)
                if np.all(b - a <= 4.0 * np.finfo(np.float64).eps * b):
                    break
            price[inner] = 0.5 * (a + b)
        value = (price - c) * _prob(alpha, beta, lp, price)
        return price, value

    # -- diagnostics -----------------------------------------------------------------------------

    def sensitivity_z(self, beta: np.ndarray) -> np.ndarray:
        """log(beta) standardized by the market's design moments."""
        mean, sd = self.log_beta_moments
        return (np.log(beta) - mean) / sd

    @property
    def log_beta_moments(self) -> tuple[float, float]:
        """Mean and sd of log(beta) over the segment mixture."""
        return log_beta_moments(self.segment_sensitivity, self.segment_spread)

    def user_traits(self) -> pd.DataFrame:
        """One row per user: segment, beta, standardized sensitivity, favourite category, etc."""
        taste = self.user_taste
        frame = pd.DataFrame(
            {
                S.USER_ID: pd.array(self.user_ids, dtype="str"),
                "segment": np.asarray(self.segments)[self.user_segment],
                "beta": self.user_beta,
                "sensitivity_z": self.sensitivity_z(self.user_beta),
                "user_alpha": self.user_alpha,
                "top_category": np.asarray(self.categories)[taste.argmax(axis=1)],
                "top_category_share": taste.max(axis=1),
                S.AGE_GROUP: np.asarray(self.age_groups)[self.user_age_group],
                "region": np.asarray(self.regions)[self.user_region],
            }
        )
        for t, name in enumerate(self.tiers):
            frame[f"affinity_{name}"] = self.tier_affinity[:, t]
        for k, name in enumerate(self.needs):
            frame[f"intent_{name}"] = self.user_intent[:, k]
        frame["new_user"] = self.user_arrival_ms > 0
        for col in ("segment", "top_category", S.AGE_GROUP, "region"):
            frame[col] = frame[col].astype("str")
        return frame

    def item_traits(self) -> pd.DataFrame:
        """One row per item: category, tier, quality, need words (tags) and arrival (cold items)."""
        frame = pd.DataFrame(
            {
                S.ITEM_ID: pd.array(self.item_ids, dtype="str"),
                S.CATEGORY: pd.array(np.asarray(self.categories)[self.item_category], dtype="str"),
                "tier": pd.array(np.asarray(self.tiers)[self.item_tier], dtype="str"),
                "quality": self.item_quality,
                "cold": self.item_arrival_ms > 0,
                "arrival_ms": self.item_arrival_ms,
            }
        )
        for k, name in enumerate(self.needs):
            frame[f"tag_{name}"] = self.item_tags[:, k].astype(bool)
        return frame

    @property
    def cold_item_ids(self) -> np.ndarray:
        """Items that arrive after the market's start (no event or offer before their arrival)."""
        return np.asarray(self.item_ids).astype(str)[self.item_arrival_ms > 0]

    @property
    def new_user_ids(self) -> np.ndarray:
        """Users whose first session is after the market's start (no history before it)."""
        return np.asarray(self.user_ids).astype(str)[self.user_arrival_ms > 0]

    # -- persistence -----------------------------------------------------------------------------

    _ARRAYS: ClassVar[tuple[str, ...]] = (
        "user_ids", "item_ids", "user_beta", "user_segment", "user_alpha", "user_taste",
        "category_alpha", "tier_affinity", "tier_alpha", "user_age_group", "user_region",
        "item_category", "item_tier", "item_quality", "list_price", "unit_cost",
        "category_sensitivity", "user_intent", "item_tags", "tag_alpha", "tag_log_beta",
        "user_arrival_ms", "item_arrival_ms", "item_popularity",
    )  # fmt: skip
    _NAMES: ClassVar[tuple[str, ...]] = (
        "categories", "tiers", "segments", "age_groups", "regions", "needs", "heldout_queries",
    )  # fmt: skip
    # The arrays with one row per user: a truth saved in parts holds them part by part.
    _USER_ARRAYS: ClassVar[tuple[str, ...]] = (
        "user_ids", "user_beta", "user_segment", "user_alpha", "user_taste", "category_alpha",
        "tier_affinity", "tier_alpha", "user_age_group", "user_region", "user_intent",
        "user_arrival_ms",
    )  # fmt: skip
    USER_PARTS_DIR: ClassVar[str] = "users"
    USER_TRAITS_DIR: ClassVar[str] = "user_traits"

    def _arrays(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        arrays = {name: np.asarray(getattr(self, name)) for name in names}
        for ids in ("user_ids", "item_ids"):
            if ids in arrays:
                arrays[ids] = arrays[ids].astype(str)
        return arrays

    def _meta(self, **extra: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "format_version": _GT_FORMAT_VERSION,
            "intercept": self.intercept,
            "novelty_start": self.novelty_start,
            "segment_sensitivity": list(self.segment_sensitivity),
            "segment_spread": list(self.segment_spread),
        }
        meta.update({name: list(getattr(self, name)) for name in self._NAMES})
        meta.update(extra)
        return meta

    def save(self, directory: str | Path) -> Path:
        """Write arrays.npz, meta.json and user_traits.parquet (for people) under `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays(self._ARRAYS)
        np.savez_compressed(directory / "arrays.npz", **arrays)  # type: ignore[arg-type]
        (directory / "meta.json").write_text(json.dumps(self._meta(), indent=2))
        self.user_traits().to_parquet(directory / "user_traits.parquet", index=False)
        return directory

    def save_user_part(self, directory: str | Path, index: int) -> Path:
        """Write this truth's users as part `index` of a truth saved in parts: their arrays as
        `users/part-NNNNN.npz` and their traits (for people) as `user_traits/part-NNNNN.parquet`.

        A market written bucket by bucket saves each bucket's users this way, so the truth of the
        whole market never sits in memory; `save_catalog` finishes the folder. Both files are
        written atomically.
        """
        directory = Path(directory)
        path = directory / self.USER_PARTS_DIR / Path(part_name(index)).with_suffix(".npz")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **self._arrays(self._USER_ARRAYS))  # type: ignore[arg-type]
        write_part(self.user_traits(), directory, self.USER_TRAITS_DIR, index)
        return path

    def save_catalog(self, directory: str | Path, partitions: int) -> Path:
        """Finish a truth saved in parts: the item-level arrays as arrays.npz, then meta.json with
        the number of user parts.

        meta.json is written last, so a folder whose writing stopped part-way does not load.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        items = tuple(name for name in self._ARRAYS if name not in self._USER_ARRAYS)
        with atomic_path(directory / "arrays.npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **self._arrays(items))  # type: ignore[arg-type]
        meta = self._meta(format_version=_GT_PARTS_FORMAT_VERSION, partitions=int(partitions))
        with atomic_path(directory / "meta.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> GroundTruth:
        """Read what `save` wrote (format 1, before needs and arrivals, reads as a classic truth),
        or a truth saved in parts (`save_user_part` + `save_catalog`), whose user parts are
        concatenated in part order into one truth."""
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        version = meta.get("format_version")
        if version not in (1, _GT_FORMAT_VERSION, _GT_PARTS_FORMAT_VERSION):
            raise ValueError(f"unsupported ground truth format in {directory}: {meta}")
        with np.load(directory / "arrays.npz", allow_pickle=False) as data:
            arrays: dict[str, Any] = {name: data[name] for name in cls._ARRAYS if name in data}
        if version == _GT_PARTS_FORMAT_VERSION:
            arrays.update(cls._load_user_parts(directory, int(meta["partitions"])))
        names: dict[str, Any] = {name: tuple(meta[name]) for name in cls._NAMES if name in meta}
        return cls(
            intercept=float(meta["intercept"]),
            novelty_start=meta.get("novelty_start"),
            segment_sensitivity=tuple(meta.get("segment_sensitivity", _REALISTIC_SENSITIVITY)),
            segment_spread=tuple(meta.get("segment_spread", _REALISTIC_SPREAD)),
            **arrays,
            **names,
        )

    @classmethod
    def _load_user_parts(cls, directory: Path, partitions: int) -> dict[str, np.ndarray]:
        """The user arrays of a truth saved in parts, concatenated in part (file name) order.

        Raises:
            ValueError: the folder does not hold the `partitions` parts its meta.json announces.
        """
        parts = sorted((directory / cls.USER_PARTS_DIR).glob("part-*.npz"))
        if len(parts) != partitions:
            raise ValueError(
                f"ground truth in {directory} has {len(parts)} user part(s) in "
                f"{cls.USER_PARTS_DIR}/, its meta.json says {partitions}"
            )
        columns: dict[str, list[np.ndarray]] = {name: [] for name in cls._USER_ARRAYS}
        for part in parts:
            with np.load(part, allow_pickle=False) as data:
                for name in cls._USER_ARRAYS:
                    columns[name].append(data[name])
        return {name: np.concatenate(chunks) for name, chunks in columns.items()}


def _expand(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Reshape a per-pair (n,) array so it broadcasts against `like` of shape (n, ...)."""
    if like.ndim <= 1:
        return x
    return x.reshape(x.shape + (1,) * (like.ndim - 1))


def _prob(
    alpha: np.ndarray, beta: np.ndarray, list_price: np.ndarray, prices: np.ndarray
) -> np.ndarray:
    logit = _expand(alpha, prices) - _expand(beta, prices) * np.log(
        prices / _expand(list_price, prices)
    )
    return sigmoid(logit)


@dataclass
class Market:
    """A simulated market: the contract tables and the ground truth behind them."""

    tables: dict[str, pd.DataFrame]
    truth: GroundTruth


# --- helpers for vectorized sampling -----------------------------------------------------------


def _format_ids(
    prefix: str, n: int, width: int, start: int = 0
) -> pd.api.extensions.ExtensionArray:
    """A str array '<prefix><i zero-padded>' for i in start..start+n-1 (padded so text order =
    number order; a market written in buckets numbers each bucket's ids on from the last one's).

    Built with pandas' vectorized string kernels: a Python f-string per row costs ~10x more.
    """
    width = max(width, len(str(max(start + n - 1, 0))))
    numbers = np.arange(start, start + n, dtype=np.int64)
    digits = pd.Series(pd.array(numbers).astype("str")).str.zfill(width)
    return (prefix + digits).array


def _str_column(codes: np.ndarray, categories: Any) -> pd.Series:
    """A pandas str column from integer codes into a vocabulary (-1 gives null).

    `take` on a small str array runs in the string backend's own kernel, far faster than
    materializing Python strings per row.
    """
    vocabulary = pd.array(np.asarray(categories, dtype=object), dtype="str")
    return pd.Series(vocabulary.take(np.asarray(codes, dtype=np.int64), allow_fill=True))


def _inverse_cdf(cdf_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sample one index per row from row-wise CDFs (rows of shape (n, K)) given uniforms u."""
    k = (u[:, None] > cdf_rows).sum(axis=1)
    return np.minimum(k, cdf_rows.shape[1] - 1)


def _within_group_rank(group_sizes: np.ndarray) -> np.ndarray:
    """0, 1, ... inside each consecutive group of the given sizes."""
    total = int(group_sizes.sum())
    starts = np.cumsum(group_sizes) - group_sizes
    return np.arange(total) - np.repeat(starts, group_sizes)


# --- the simulation ----------------------------------------------------------------------------


def _simulate_catalog(
    config: SimConfig, rng: np.random.Generator, rng_real: np.random.Generator
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Items: category, tier, brand, price, cost and text; with intents, need words and tags.

    `rng` draws what the classic market draws, in its order; everything the realistic preset
    adds comes from `rng_real`, so the classic catalog stays the same for the same seed.
    """
    n_cat, n = len(CATEGORIES), config.n_items
    popularity = np.array([c.popularity for c in CATEGORIES])
    # Every category gets at least one item; the rest follow category popularity.
    category = np.concatenate(
        [np.arange(n_cat), rng.choice(n_cat, size=n - n_cat, p=popularity / popularity.sum())]
    )
    category = np.sort(category)  # items grouped by category: a view samples a contiguous range
    # Each category carries a few brands of each tier.
    k = _BRANDS_PER_TIER_IN_CATEGORY
    cat_brands = np.stack(
        [
            np.stack([rng.choice(len(BRANDS[t]), size=k, replace=False) for t in range(len(TIERS))])
            for _ in range(n_cat)
        ]
    )  # (C, T, k)
    tier = rng.integers(0, len(TIERS), size=n)
    brand_slot = rng.integers(0, k, size=n)
    brand_idx = cat_brands[category, tier, brand_slot]
    noun = rng.integers(0, 3, size=n)
    attr = rng.integers(0, 4, size=n)
    size = rng.integers(0, 3, size=n)
    tier_word = rng.integers(0, 4, size=n)
    base = np.array([c.base_price for c in CATEGORIES])[category]
    size_mult = np.array([c.size_multipliers for c in CATEGORIES])[category, size]
    raw_price = base * _TIER_PRICE[tier] * size_mult * rng.lognormal(0.0, 0.2, size=n)
    list_price = np.round(np.maximum(raw_price, 1.0), 2)
    unit_cost = np.round(list_price * rng.uniform(*config.cost_share, size=n), 2)
    quality = rng.normal(0.0, _QUALITY_SD, size=n)
    popularity_item = rng.normal(0.0, 0.5, size=n)  # browsing prominence, not demand
    if config.intents:  # one extra need word for some items: which need, which of its words
        add_word = rng_real.random(n) < _TAG_ADD_PROB
        need_u, word_u = rng_real.random(n), rng_real.random(n)

    titles, brands, descriptions = [], [], []
    # One Python pass over the catalog (hundreds to thousands of items), never over events.
    for j in range(n):
        cat = CATEGORIES[category[j]]
        brand = BRANDS[tier[j]][brand_idx[j]]
        attribute, noun_j, size_j = cat.attributes[attr[j]], cat.nouns[noun[j]], cat.sizes[size[j]]
        before, after = "", ""
        if config.intents and add_word[j]:
            needs = list(TAG_WORDS[cat.name])
            need = needs[int(need_u[j] * len(needs))]
            options = [w for w in TAG_WORDS[cat.name][need] if w not in (attribute, noun_j)]
            if options:
                word = options[int(word_u[j] * len(options))]
                before, after = (word, "") if need in _TAG_BEFORE_NOUN else ("", word)
        words = [
            brand,
            _TIER_WORDS[tier[j]][tier_word[j]],
            before,
            attribute,
            noun_j,
            size_j,
            after,
        ]
        titles.append(" ".join(w for w in words if w))
        brands.append(brand)
        extra = f" {(before or after).capitalize()}." if (before or after) else ""
        descriptions.append(
            f"{noun_j.capitalize()} by {brand}: {attribute}, {size_j}.{extra} "
            f"A {TIERS[tier[j]]} pick in {cat.name}."
        )
    item_ids = np.asarray(_format_ids("i", n, 5), dtype=str)
    items = pd.DataFrame(
        {
            S.ITEM_ID: pd.array(item_ids, dtype="str"),
            S.TITLE: pd.array(titles, dtype="str"),
            S.CATEGORY: _str_column(category, [c.name for c in CATEGORIES]),
            S.BRAND: pd.array(brands, dtype="str"),
            S.LIST_PRICE: list_price,
            S.UNIT_COST: unit_cost,
            S.DESCRIPTION: pd.array(descriptions, dtype="str"),
        }
    )
    arrays = {
        "item_ids": item_ids,
        "category": category,
        "tier": tier,
        "quality": quality,
        "list_price": list_price,
        "unit_cost": unit_cost,
        "popularity": popularity_item,
        "tags": item_tags(titles, category) if config.intents else np.zeros((n, 0)),
        "cold": _pick_cold_items(category, config.cold_item_share, rng_real),
    }
    return items, arrays


def item_tags(titles: Any, category: np.ndarray) -> np.ndarray:
    """(I, K) 0/1: whether each title holds one of its category's words for each need.

    Whole words or phrases only ("eco" is not in "second"); what the text says is what counts,
    whether the word came from the classic attributes or was added for a need.
    """
    tags = np.zeros((len(category), len(NEED_INTENTS)))
    for j, title in enumerate(titles):
        patterns = _TAG_PATTERNS[CATEGORIES[int(category[j])].name]
        for k, pattern in patterns.items():
            tags[j, k] = pattern.search(str(title).lower()) is not None
    return tags


def _tag_patterns() -> dict[str, dict[int, re.Pattern[str]]]:
    out: dict[str, dict[int, re.Pattern[str]]] = {}
    for cat, by_need in TAG_WORDS.items():
        out[cat] = {
            NEED_INTENTS.index(need): re.compile(
                r"(?<![\w-])(?:" + "|".join(re.escape(w) for w in words) + r")(?![\w-])"
            )
            for need, words in by_need.items()
        }
    return out


_TAG_PATTERNS = _tag_patterns()


def _pick_cold_items(category: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A bool mask of `round(share * I)` items that arrive late; every category keeps one old item."""
    n = len(category)
    cold = np.zeros(n, dtype=bool)
    n_cold = int(round(share * n))
    if n_cold == 0:
        return cold
    old_left = np.bincount(category, minlength=len(CATEGORIES))
    for j in rng.permutation(n):
        if cold.sum() >= n_cold:
            break
        if old_left[category[j]] > 1:
            cold[j] = True
            old_left[category[j]] -= 1
    return cold


def _query_cdf(z: np.ndarray, intent: np.ndarray | None) -> np.ndarray:
    """(U, classes) cumulative probabilities of what a user's search asks for: QUERY_CLASSES, or
    INTENTS when `intent` (the users' need strengths) is given.

    The price attitude: P(cheap-like) rises and P(premium-like) falls with sensitivity z; needs
    take their shares from plain searches.
    """
    p_cheap = sigmoid(1.4 * z - 0.9)
    p_premium = sigmoid(-1.4 * z - 1.2)
    if intent is None:
        return np.stack([p_cheap, 1.0 - p_premium, np.ones(len(z))], axis=1)
    need_w = _NEED_SEARCH_WEIGHT * intent
    rest = (1.0 - p_cheap - p_premium) / (1.0 + need_w.sum(axis=1))
    probs = np.column_stack([p_cheap, rest, p_premium, rest[:, None] * need_w])
    query_cdf = np.cumsum(probs, axis=1)
    query_cdf[:, -1] = 1.0
    return query_cdf


def _simulate_users(
    config: SimConfig, rng: np.random.Generator, rng_real: np.random.Generator
) -> dict[str, np.ndarray]:
    """Users' latent traits; with intents, their needs. `rng_real` draws only what is new."""
    n, n_cat = config.n_users, len(CATEGORIES)
    segment = rng.choice(len(SEGMENTS), size=n, p=_SEGMENT_PROBS).astype(np.int8)
    log_median = np.log(np.asarray(config.segment_sensitivity, float))
    log_beta = rng.normal(log_median[segment], np.asarray(config.segment_spread, float)[segment])
    beta = np.exp(log_beta)
    mean, sd = log_beta_moments(config.segment_sensitivity, config.segment_spread)
    z = (log_beta - mean) / sd
    popularity = np.array([c.popularity for c in CATEGORIES])
    taste = rng.dirichlet(_TASTE_CONCENTRATION * popularity / popularity.mean(), size=n)
    category_alpha = _TASTE_WEIGHT * np.clip(np.log(n_cat * taste + 1e-300), *_TASTE_CLIP)
    # Sensitive users like budget brands and shun premium ones; noise keeps it imperfect.
    slope = np.array([_TIER_SLOPE, 0.0, -_TIER_SLOPE])
    tier_affinity = z[:, None] * slope + rng.normal(0.0, _TIER_NOISE, size=(n, len(TIERS)))
    user_alpha = _ALPHA_SENSITIVITY_SLOPE * z + rng.normal(0.0, _USER_ALPHA_SD, size=n)
    age_logits = np.log(_AGE_BASE_PROBS) + 0.5 * z[:, None] * _AGE_SENSITIVITY_SLOPE
    age_probs = np.exp(age_logits - age_logits.max(axis=1, keepdims=True))
    age_probs /= age_probs.sum(axis=1, keepdims=True)
    age_group = _inverse_cdf(np.cumsum(age_probs, axis=1), rng.random(n)).astype(np.int8)
    region = rng.choice(len(REGIONS), size=n, p=_REGION_PROBS).astype(np.int8)
    activity = rng.gamma(2.0, 0.5, size=n)  # mean 1: some users shop far more than others
    intent = np.zeros((n, 0))
    if config.intents:
        # Needs: held or not (prevalence leaning with sensitivity), and how strongly.
        logit = np.log(_NEED_PREVALENCE / (1 - _NEED_PREVALENCE)) + z[:, None] * _NEED_Z_SLOPE
        held = rng_real.random((n, len(NEED_INTENTS))) < sigmoid(logit)
        intent = held * rng_real.uniform(*_NEED_STRENGTH, size=held.shape)
    query_cdf = _query_cdf(z, intent if config.intents else None)
    new_user = np.zeros(n, dtype=bool)
    new_user[rng_real.permutation(n)[: int(round(config.new_user_share * n))]] = True
    return {
        "user_ids": np.asarray(_format_ids("u", n, 6), dtype=str),
        "segment": segment,
        "beta": beta,
        "z": z,
        "taste": taste,
        "category_alpha": category_alpha,
        "tier_affinity": tier_affinity,
        "tier_alpha": _TIER_WEIGHT * tier_affinity,
        "user_alpha": user_alpha,
        "age_group": age_group,
        "region": region,
        "activity": activity,
        "query_cdf": query_cdf,
        "intent": intent,
        "new": new_user,
    }


class _Streams(NamedTuple):
    """The random streams of a market (or of one bucket of users of a market written in parts)."""

    items: np.random.Generator
    users: np.random.Generator
    sessions: np.random.Generator
    offers: np.random.Generator
    real_items: np.random.Generator
    real_users: np.random.Generator
    real_sessions: np.random.Generator


def _streams(seq: np.random.SeedSequence) -> _Streams:
    """The streams drawn from `seq`: its first four children are the classic market's, the
    fifth's children feed only what realism adds (so the classic market stays the same)."""
    seeds = seq.spawn(5)
    rng_items, rng_users, rng_sessions, rng_offers = (np.random.default_rng(s) for s in seeds[:4])
    real_items, real_users, real_sessions = (np.random.default_rng(s) for s in seeds[4].spawn(3))
    return _Streams(
        rng_items, rng_users, rng_sessions, rng_offers, real_items, real_users, real_sessions
    )


def simulate(config: SimConfig | None = None) -> Market:
    """Simulate a market: items, users, sessions of behaviour and logged offers, plus truth."""
    config = config or SimConfig()
    rngs = _streams(np.random.SeedSequence(config.seed))
    items, it = _simulate_catalog(config, rngs.items, rngs.real_items)
    us = _simulate_users(config, rngs.users, rngs.real_users)
    truth = _make_truth(config, it, us)
    events, offers, novelty = _simulate_behaviour(
        config, truth, it, us, rngs.sessions, rngs.offers, rngs.real_sessions
    )
    _record_novelty(truth, config, novelty)
    tables = {S.ITEMS: items, S.EVENTS: events, S.OFFERS: offers, S.USERS: _users_table(us)}
    return Market(tables=tables, truth=truth)


def _make_truth(config: SimConfig, it: dict[str, np.ndarray], us: dict[str, Any]) -> GroundTruth:
    """The ground truth of users `us` on catalog `it` (arrivals and novelty come later, from the
    behaviour: `_record_novelty`)."""
    needs = NEED_INTENTS if config.intents else ()
    return GroundTruth(
        user_ids=us["user_ids"],
        item_ids=it["item_ids"],
        intercept=_INTERCEPT + _NEED_INTERCEPT_SHIFT if config.intents else _INTERCEPT,
        user_beta=us["beta"],
        user_segment=us["segment"],
        user_alpha=us["user_alpha"],
        user_taste=us["taste"],
        category_alpha=us["category_alpha"],
        tier_affinity=us["tier_affinity"],
        tier_alpha=us["tier_alpha"],
        user_age_group=us["age_group"],
        user_region=us["region"],
        item_category=it["category"],
        item_tier=it["tier"],
        item_quality=it["quality"],
        list_price=it["list_price"],
        unit_cost=it["unit_cost"],
        category_sensitivity=np.array([c.sensitivity for c in CATEGORIES]),
        needs=needs,
        user_intent=us["intent"],
        item_tags=it["tags"],
        tag_alpha=np.array([TAG_EFFECTS[k][0] for k in needs]),
        tag_log_beta=np.array([TAG_EFFECTS[k][1] for k in needs]),
        item_popularity=it["popularity"],
        segment_sensitivity=tuple(config.segment_sensitivity),
        segment_spread=tuple(config.segment_spread),
    )


def _users_table(us: dict[str, Any]) -> pd.DataFrame:
    """The users contract table of users `us`."""
    return pd.DataFrame(
        {
            S.USER_ID: pd.array(us["user_ids"], dtype="str"),
            S.AGE_GROUP: _str_column(us["age_group"], list(AGE_GROUPS)),
            "region": _str_column(us["region"], list(REGIONS)),
        }
    )


def _record_novelty(truth: GroundTruth, config: SimConfig, novelty: dict[str, Any]) -> None:
    """Put what the behaviour decided about novelty (arrivals, its start, held-out phrasings)
    into the truth."""
    if not config.has_novelty:
        return
    truth.user_arrival_ms = novelty["user_arrival_ms"]
    truth.item_arrival_ms = novelty["item_arrival_ms"]
    start = pd.Timestamp(config.start, tz="UTC")
    truth.novelty_start = (start + pd.Timedelta(novelty["novelty_ms"], unit="ms")).isoformat()
    if config.unseen_phrasing_share > 0:
        truth.heldout_queries = PHRASEBOOK.heldout_phrases


@dataclass(frozen=True)
class _Bucket:
    """What one bucket of users takes from the market it is part of (a market written in parts):
    when novelty starts and when cold items arrive, decided once for the whole market, and where
    the bucket's session, offer and event numbers start, so no id repeats across buckets."""

    novelty_ms: int
    item_arrival_ms: np.ndarray
    first_session: int
    first_offer: int
    first_event: int
    widths: tuple[int, int, int]  # digits of session, offer and event ids


def _session_starts(
    config: SimConfig, activity: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions: Poisson per user around an activity level, spread over days with a daily rhythm.

    Returns:
        (each user's session rate over the span, each session's user, its start in ms).
    """
    lam = config.sessions_per_user_week * config.n_days / 7.0 * activity
    n_sess_user = rng.poisson(lam)
    sess_user = np.repeat(np.arange(config.n_users), n_sess_user)
    n_sess = len(sess_user)
    day = rng.integers(0, config.n_days, size=n_sess)
    hour = np.minimum(np.searchsorted(_HOUR_CDF, rng.random(n_sess)), 23)
    sess_start = (day * 86_400 + hour * 3_600) * 1_000 + rng.integers(0, 3_600_000, size=n_sess)
    return lam, sess_user, sess_start


def _item_arrivals(
    config: SimConfig, cold: np.ndarray, novelty_ms: int, rng: np.random.Generator
) -> np.ndarray:
    """When each item arrives (ms after the start): cold items spread over the first
    `_ARRIVAL_WINDOW` of [novelty_start, end], the others 0 (there from the start)."""
    span_ms = config.n_days * _DAY_MS
    arrival = np.zeros(len(cold), dtype=np.int64)
    window = _ARRIVAL_WINDOW * max(span_ms - novelty_ms, 0)  # none left: arrive at once
    arrival[cold] = novelty_ms + np.round(rng.random(int(cold.sum())) * window).astype(np.int64)
    return arrival


def _simulate_behaviour(
    config: SimConfig,
    truth: GroundTruth,
    it: dict[str, np.ndarray],
    us: dict[str, np.ndarray],
    rng: np.random.Generator,
    rng_offers: np.random.Generator,
    rng_real: np.random.Generator,
    bucket: _Bucket | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Sessions -> searches, views (= offers) with ladder prices, funnels; all vectorized.

    `rng` and `rng_offers` draw what the classic market draws, in its order; what the realistic
    preset adds (arrivals, new users' sessions, intent phrasings) comes from `rng_real`. For one
    bucket of a market written in parts (`bucket`), novelty's start and the items' arrivals are
    the market's, not drawn here, and ids are numbered on from the previous buckets'.

    Returns:
        (events, offers, novelty) with novelty's `novelty_ms`, `user_arrival_ms` and
        `item_arrival_ms` (ms after the start; arrivals 0 for who is there from the start), and
        `n_sessions`.
    """
    n_cat = len(CATEGORIES)
    span_ms = config.n_days * _DAY_MS
    lam, sess_user, sess_start = _session_starts(config, us["activity"], rng)
    n_sess = len(sess_user)
    hour_cdf = _HOUR_CDF
    novelty_ms = span_ms  # nothing new happens unless the config asks for it
    user_arrival = np.zeros(config.n_users, dtype=np.int64)
    item_arrival = np.zeros(len(it["category"]), dtype=np.int64)
    if config.has_novelty:
        if bucket is None:
            novelty_ms = _novelty_start_ms(config, sess_start[~us["new"][sess_user]])
        else:
            novelty_ms = bucket.novelty_ms
        if us["new"].any():
            sess_user, sess_start, user_arrival = _new_user_sessions(
                config, us["new"], lam, sess_user, sess_start, novelty_ms, hour_cdf, rng_real
            )
            n_sess = len(sess_user)
        if bucket is None:
            item_arrival = _item_arrivals(config, it["cold"], novelty_ms, rng_real)
        else:
            item_arrival = bucket.item_arrival_ms
    first_session, first_offer, first_event = (
        (bucket.first_session, bucket.first_offer, bucket.first_event) if bucket else (0, 0, 0)
    )
    session_width, offer_width, event_width = bucket.widths if bucket else (7, 7, 8)
    order = np.argsort(sess_start, kind="stable")  # session ids follow time
    sess_user, sess_start = sess_user[order], sess_start[order]
    taste_cdf = np.cumsum(us["taste"], axis=1)
    focus = _inverse_cdf(taste_cdf[sess_user], rng.random(n_sess))

    # Searches open a session (sometimes two); the phrasing follows the user's price attitude.
    n_search = (rng.random(n_sess) < _SEARCH_PROB).astype(np.int64)
    n_search += (n_search > 0) & (rng.random(n_sess) < _SECOND_SEARCH_PROB)
    search_sess = np.repeat(np.arange(n_sess), n_search)
    search_rank = _within_group_rank(n_search)
    search_user = sess_user[search_sess]
    q_class = _inverse_cdf(us["query_cdf"][search_user], rng.random(len(search_sess)))
    search_cat = focus[search_sess]
    if config.intents:  # q_class indexes INTENTS; held-out phrasings only from novelty_start on
        late = sess_start[search_sess] >= novelty_ms
        query_code, vocabulary = _intent_queries(
            q_class, search_cat, late, config.unseen_phrasing_share, rng_real
        )
        # A session's intent is what its first search asked for (-1: no search).
        first = search_rank == 0
        session_intent = np.full(n_sess, -1, dtype=np.int64)
        session_intent[search_sess[first]] = q_class[first]
    else:
        query_code, vocabulary = _classic_queries(q_class, search_cat, rng)
    search_offset_s = search_rank * rng.uniform(8.0, 30.0, size=len(search_sess))
    search_ts = sess_start[search_sess] + np.round(search_offset_s * 1000).astype(np.int64)

    # Views: each is an offer. Category mostly the session's focus, else a fresh taste draw.
    n_views = 1 + rng.poisson(config.offers_per_session - 1.0, size=n_sess)
    view_sess = np.repeat(np.arange(n_sess), n_views)
    n_off = len(view_sess)
    view_user = sess_user[view_sess]
    other = _inverse_cdf(taste_cdf[view_user], rng.random(n_off))
    view_cat = np.where(rng.random(n_off) < _FOCUS_SHARE, focus[view_sess], other)
    # Item: a few random candidates of the category, Gumbel-max on tier affinity + prominence.
    # Candidates come from the items already there when the session starts (cold items later).
    counts = np.bincount(it["category"], minlength=n_cat)
    starts = np.cumsum(counts) - counts
    cold = it["cold"].any()
    if cold:
        slot_item, available = _available_items(
            it["category"], item_arrival, view_cat, sess_start[view_sess]
        )
    else:
        available = counts[view_cat]
    cand = starts[view_cat, None] + (
        rng.random((n_off, _N_CANDIDATES)) * available[:, None]
    ).astype(np.int64)
    if cold:
        cand = slot_item[cand]
    score = (
        us["tier_affinity"][view_user[:, None], it["tier"][cand]]
        + it["popularity"][cand]
        + rng.gumbel(size=(n_off, _N_CANDIDATES))
    )
    if cold:
        score += _NEW_ITEM_BONUS * it["cold"][cand]
    if config.intents:
        score += _browse_bonus(
            us["intent"], it["tags"], it["tier"], session_intent, view_user, view_sess, cand
        )
    view_item = cand[np.arange(n_off), score.argmax(axis=1)]

    # Logging policy: a random rung of the ladder, with its probability as propensity.
    ladder, probs = np.asarray(config.ladder), np.asarray(config.ladder_probs)
    rung = np.minimum(np.searchsorted(np.cumsum(probs), rng_offers.random(n_off)), len(probs) - 1)
    price = np.round(it["list_price"][view_item] * ladder[rung], 2)
    propensity = probs[rung]
    p_true = truth._prob_idx(view_user, view_item, price)
    purchased = rng_offers.random(n_off) < p_true
    clicked = purchased | (rng_offers.random(n_off) < click_probability(p_true))
    carted = purchased | (clicked & (rng_offers.random(n_off) < _CART_ABANDON))
    click_dt = rng_offers.uniform(2.0, 10.0, size=n_off)
    cart_dt = click_dt + rng_offers.uniform(5.0, 30.0, size=n_off)
    buy_dt = cart_dt + rng_offers.uniform(5.0, 40.0, size=n_off)
    # The next view waits for this view's funnel to end, so an offer's outcome always lands
    # before the user's next offer in the session and strictly after its own view.
    span = np.where(purchased, buy_dt, np.where(carted, cart_dt, np.where(clicked, click_dt, 0.0)))
    gap = span + 5.0 + rng.exponential(40.0, size=n_off)
    csum = np.cumsum(gap) - gap  # exclusive cumulative sum over all views ...
    view_starts = np.cumsum(n_views) - n_views
    within = csum - np.repeat(csum[view_starts], n_views)  # ... restarted in every session
    first_view_s = n_search * 25.0 + rng.uniform(3.0, 20.0, size=n_sess)
    view_ts = sess_start[view_sess] + np.round((first_view_s[view_sess] + within) * 1000).astype(
        np.int64
    )

    # Offers, in time order.
    o_order = np.argsort(view_ts, kind="stable")
    start = pd.Timestamp(config.start, tz="UTC")
    offers = pd.DataFrame(
        {
            S.OFFER_ID: _format_ids("o", n_off, offer_width, start=first_offer),
            S.TS: _timestamps(start, view_ts[o_order]),
            S.USER_ID: _str_column(view_user[o_order], us["user_ids"]),
            S.ITEM_ID: _str_column(view_item[o_order], it["item_ids"]),
            S.PRICE: price[o_order],
            S.PURCHASED: purchased[o_order].astype(np.int64),
            S.PROPENSITY: propensity[o_order],
            S.POLICY: _str_column(np.zeros(n_off, dtype=np.int64), [LOGGING_POLICY]),
        }
    )

    # Events: searches, views, and the funnel after each view, all at the price shown.
    def dt_ms(mask: np.ndarray, dt: np.ndarray) -> np.ndarray:
        return view_ts[mask] + np.maximum(np.round(dt[mask] * 1000).astype(np.int64), 1)

    type_code = {t: k for k, t in enumerate(S.EVENT_TYPES)}
    parts = [
        (search_ts, search_sess, np.full(len(search_sess), -1), query_code, np.nan, S.SEARCH),
        (view_ts, view_sess, view_item, None, price, S.VIEW),
        (
            dt_ms(clicked, click_dt),
            view_sess[clicked],
            view_item[clicked],
            None,
            price[clicked],
            S.CLICK,
        ),
        (
            dt_ms(carted, cart_dt),
            view_sess[carted],
            view_item[carted],
            None,
            price[carted],
            S.ADD_TO_CART,
        ),
        (
            dt_ms(purchased, buy_dt),
            view_sess[purchased],
            view_item[purchased],
            None,
            price[purchased],
            S.PURCHASE,
        ),
    ]
    ev_ts = np.concatenate([p[0] for p in parts])
    ev_sess = np.concatenate([p[1] for p in parts])
    ev_item = np.concatenate([p[2] for p in parts])
    ev_query = np.concatenate([p[3] if p[3] is not None else np.full(len(p[0]), -1) for p in parts])
    ev_price = np.concatenate(
        [np.broadcast_to(np.asarray(p[4], dtype=np.float64), (len(p[0]),)) for p in parts]
    )
    ev_type = np.concatenate([np.full(len(p[0]), type_code[p[5]]) for p in parts])
    e_order = np.argsort(ev_ts, kind="stable")
    ev_sess = ev_sess[e_order]
    events = pd.DataFrame(
        {
            S.EVENT_ID: _format_ids("e", len(ev_ts), event_width, start=first_event),
            S.TS: _timestamps(start, ev_ts[e_order]),
            S.USER_ID: _str_column(sess_user[ev_sess], us["user_ids"]),
            S.SESSION_ID: _str_column(
                ev_sess, _format_ids("s", n_sess, session_width, start=first_session)
            ),
            S.EVENT_TYPE: _str_column(ev_type[e_order], list(S.EVENT_TYPES)),
            S.ITEM_ID: _str_column(ev_item[e_order], it["item_ids"]),
            S.QUERY: _str_column(ev_query[e_order], vocabulary),
            S.PRICE: ev_price[e_order],
        }
    )
    novelty = {
        "novelty_ms": novelty_ms,
        "user_arrival_ms": user_arrival,
        "item_arrival_ms": item_arrival,
        "n_sessions": n_sess,
    }
    return events, offers, novelty


_DAY_MS = 86_400_000
_HOUR_CDF = np.cumsum(_HOUR_WEIGHTS) / _HOUR_WEIGHTS.sum()
_FIRST_VIEW_MAX_MS = 70_000  # a session's first view comes at most 2 * 25 s + 20 s after it opens
_TAIL_MS = 3_600_000  # the last sessions end within an hour of the span's end


def _novelty_start_ms(config: SimConfig, old_starts: np.ndarray) -> int:
    """An upper bound of where `time_split(offers, test_fraction=1 - f)` puts its test start.

    The split's boundary is lo + f * (hi - lo) = (1 - f) * lo + f * hi over the offers' first
    and last times; lo <= the earliest session's start + its first view's delay and hi <= the
    span's end + a tail. Rounded up to the minute.
    """
    f = config.test_start_fraction
    lo = (int(old_starts.min()) if len(old_starts) else 0) + _FIRST_VIEW_MAX_MS
    hi = config.n_days * _DAY_MS + _TAIL_MS
    bound = (1.0 - f) * lo + f * hi
    return int(np.ceil(bound / 60_000.0)) * 60_000


def _new_user_sessions(
    config: SimConfig,
    new: np.ndarray,
    lam: np.ndarray,
    sess_user: np.ndarray,
    sess_start: np.ndarray,
    novelty_ms: int,
    hour_cdf: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace new users' sessions by ones from their arrival on; the first opens at arrival.

    Arrivals spread over the first `_ARRIVAL_WINDOW` of [novelty_start, end]; a new user's
    session count is 1 + Poisson(their rate over the time left), so they are not hyperactive.

    Returns:
        (session users, session starts, arrival ms per user: 0 for users there from the start).
    """
    span_ms = config.n_days * _DAY_MS
    keep = ~new[sess_user]
    new_users = np.flatnonzero(new)
    arrival_new = novelty_ms + np.round(
        rng.random(len(new_users)) * _ARRIVAL_WINDOW * max(span_ms - novelty_ms, 0)
    ).astype(np.int64)
    left = np.maximum(span_ms - arrival_new, 0)  # a market too short for novelty leaves none
    count = 1 + rng.poisson(lam[new_users] * left / span_ms)
    users = np.repeat(new_users, count)
    arrival = np.repeat(arrival_new, count)
    # The daily rhythm over the days left; a draw before the arrival moves after it, uniformly.
    first_day = arrival // _DAY_MS
    days_left = np.maximum(config.n_days - first_day, 0)
    day = first_day + (rng.random(len(users)) * days_left).astype(np.int64)
    hour = np.minimum(np.searchsorted(hour_cdf, rng.random(len(users))), 23)
    start = day * _DAY_MS + hour * 3_600_000 + rng.integers(0, 3_600_000, size=len(users))
    early = start < arrival
    start[early] = arrival[early] + (
        rng.random(int(early.sum())) * np.maximum(span_ms - arrival[early], 0)
    ).astype(np.int64)
    start[np.cumsum(count) - count] = arrival_new  # the first visit is the arrival
    user_arrival = np.zeros(len(new), dtype=np.int64)
    user_arrival[new_users] = arrival_new
    return (
        np.concatenate([sess_user[keep], users]),
        np.concatenate([sess_start[keep], start]),
        user_arrival,
    )


def _available_items(
    category: np.ndarray, arrival: np.ndarray, view_cat: np.ndarray, at: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Items a view can pick: per category, those there from the start, then arrivals so far.

    Returns:
        (slot_item, available): `slot_item` maps a position in the category-sorted catalog to an
        item so that each category's items present from the start come first and the cold ones
        follow by arrival; `available[v]` counts the items of view v's category there at `at[v]`.
    """
    n_cat = len(CATEGORIES)
    slot_item = np.lexsort((arrival, category))  # by category, then arrival (0 first)
    available = np.zeros(len(view_cat), dtype=np.int64)
    for c in range(n_cat):
        in_c = view_cat == c
        times = np.sort(arrival[category == c])
        available[in_c] = np.searchsorted(times, at[in_c], side="right")
    return slot_item, available


def _browse_bonus(
    intent: np.ndarray,
    tags: np.ndarray,
    tier: np.ndarray,
    session_intent: np.ndarray,
    view_user: np.ndarray,
    view_sess: np.ndarray,
    cand: np.ndarray,
) -> np.ndarray:
    """(n_views, candidates) score bonus: items matching the user's needs and the session's search.

    The session's searched intent favours budget items after a cheap search, premium ones after a
    premium search and items with the need's words after a need search.
    """
    # One (views, candidates) gather per need, not a (views, candidates, K) temporary.
    bonus = np.zeros(cand.shape)
    for k in range(tags.shape[1]):
        bonus += (_NEED_BROWSE_BONUS * intent[view_user, k])[:, None] * tags[:, k][cand]
    # matches[i, j]: item i fits intent j (INTENTS order: cheap, plain, premium, needs...).
    matches = np.column_stack([tier == 0, np.zeros(len(tier)), tier == len(TIERS) - 1, tags])
    si = session_intent[view_sess]
    flat = matches.ravel()[cand * matches.shape[1] + np.maximum(si, 0)[:, None]]
    bonus += np.where(si[:, None] >= 0, _INTENT_BROWSE_BONUS * flat, 0.0)
    return bonus


@dataclass(frozen=True)
class Session:
    """One shopper's visit as the market's shoppers make it: what they searched, what they browsed."""

    user: int  # position in the truth's `user_ids`
    queries: tuple[str, ...]  # searches that open the session, in order (none for about a third)
    items: np.ndarray  # positions in the truth's `item_ids` of the distinct items browsed


def browse_session(
    truth: GroundTruth, user: int, n_items: int, rng: np.random.Generator
) -> Session:
    """A session of `user` that browses `n_items` distinct items, drawn as `simulate` draws views.

    The same steps and constants as the market (`_simulate_behaviour`): a focus category from the
    user's taste; a search with probability `_SEARCH_PROB` (a second one sometimes), asking for the
    user's price attitude or needs (`_query_cdf`) in the usual phrasings; then each item from
    `_N_CANDIDATES` random items of the focus category (else a fresh taste draw), the one with the
    highest tier affinity + prominence + Gumbel noise (+ the need and searched-intent bonuses, and
    the featured bonus of items that arrived during the market). Every item exists by then (the
    session comes after the market), and a repeat is drawn again (a page lists an item once).
    Vectorized across slots, one session at a time: the loop's shoppers ask for a few thousand.
    """
    n_cat = len(truth.categories)
    taste_cdf = np.cumsum(truth.user_taste[user])[None, :]
    intents = len(truth.needs) > 0
    z = truth.sensitivity_z(truth.user_beta[[user]])
    qcdf = _query_cdf(z, truth.user_intent[[user]] if intents else None)
    focus = int(_inverse_cdf(taste_cdf, rng.random(1))[0])
    n_search = int(rng.random() < _SEARCH_PROB)
    n_search += int(n_search > 0 and rng.random() < _SECOND_SEARCH_PROB)
    q_class = _inverse_cdf(np.repeat(qcdf, n_search, axis=0), rng.random(n_search))
    queries = _search_phrases(q_class, np.full(n_search, focus), intents, rng)
    session_intent = np.array([q_class[0] if n_search else -1])

    by_cat = [np.flatnonzero(truth.item_category == c) for c in range(n_cat)]
    featured = truth.item_arrival_ms > 0
    want = min(n_items, len(truth.item_ids))
    chosen: list[int] = []
    for _ in range(50):  # a few rounds of draws fill the page; 50 is far beyond what any needs
        need = want - len(chosen)
        if need <= 0:
            break
        other = _inverse_cdf(np.repeat(taste_cdf, need, axis=0), rng.random(need))
        cat = np.where(rng.random(need) < _FOCUS_SHARE, focus, other)
        pools = [by_cat[c] for c in cat]
        cand = np.stack([p[rng.integers(0, len(p), _N_CANDIDATES)] for p in pools])
        users = np.full(need, user)
        score = (
            truth.tier_affinity[users[:, None], truth.item_tier[cand]]
            + truth.item_popularity[cand]
            + rng.gumbel(size=cand.shape)
            + _NEW_ITEM_BONUS * featured[cand]
        )
        if intents:
            score += _browse_bonus(
                truth.user_intent, truth.item_tags, truth.item_tier, session_intent, users,
                np.zeros(need, dtype=np.int64), cand,
            )  # fmt: skip
        for item in cand[np.arange(need), score.argmax(axis=1)]:
            if int(item) not in chosen and len(chosen) < want:
                chosen.append(int(item))
    if len(chosen) < want:  # tiny catalogs: the rest by taste, as a page would fill itself
        rest = np.setdiff1d(np.arange(len(truth.item_ids)), chosen)
        w = truth.user_taste[user, truth.item_category[rest]] + 1e-9
        chosen += rng.choice(rest, size=want - len(chosen), replace=False, p=w / w.sum()).tolist()
    return Session(user, tuple(queries), np.asarray(chosen, dtype=np.int64))


def _search_phrases(
    q_class: np.ndarray, category: np.ndarray, intents: bool, rng: np.random.Generator
) -> list[str]:
    """The words of searches asking for `q_class` in `category`, in the market's usual phrasings
    (INTENTS' with intents, else QUERY_CLASSES')."""
    if intents:
        codes, vocabulary = _intent_queries(
            q_class, category, np.zeros(len(q_class), bool), 0.0, rng
        )
    else:
        codes, vocabulary = _classic_queries(q_class, category, rng)
    return [str(vocabulary[c]) for c in codes]


# Every classic phrasing, coded ((category * classes + class) * templates + template) * 3 + noun;
# words repeat across templates, so the codes point into the distinct phrases.
_CLASSIC_VOCABULARY, _CLASSIC_CODE = np.unique(
    [
        _QUERY_TEMPLATES[k][t].format(q=cat.queries[w])
        for cat in CATEGORIES
        for k in range(len(QUERY_CLASSES))
        for t in range(len(_QUERY_TEMPLATES[0]))
        for w in range(3)
    ],
    return_inverse=True,
)


def _classic_queries(
    q_class: np.ndarray, category: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Phrase codes and vocabulary for classic searches of `q_class` in `category` (a template,
    then a query noun, drawn in that order)."""
    n_templates = len(_QUERY_TEMPLATES[0])
    template = rng.integers(0, n_templates, size=len(q_class))
    noun = rng.integers(0, 3, size=len(q_class))
    code = ((category * len(QUERY_CLASSES) + q_class) * n_templates + template) * 3 + noun
    return _CLASSIC_CODE[code], _CLASSIC_VOCABULARY


@dataclass(frozen=True)
class _Phrasebook:
    """Every intent phrasing for every category and query noun, coded for vectorized sampling."""

    phrase_code: np.ndarray  # (C * n_templates * 3,) code into `vocabulary`
    vocabulary: np.ndarray  # sorted distinct phrases
    seen: np.ndarray  # (n_intents, max) template ids of the usual phrasings (padded)
    n_seen: np.ndarray  # (n_intents,)
    held: np.ndarray  # (n_intents, max) template ids of the held-out phrasings (padded)
    n_held: np.ndarray  # (n_intents,)
    n_templates: int
    heldout_phrases: tuple[str, ...]


def _build_phrasebook() -> _Phrasebook:
    templates: list[str] = []
    seen_ids: list[list[int]] = []
    held_ids: list[list[int]] = []
    for intent in INTENTS:
        for table, ids in ((INTENT_TEMPLATES, seen_ids), (HELDOUT_TEMPLATES, held_ids)):
            ids.append(list(range(len(templates), len(templates) + len(table[intent]))))
            templates.extend(table[intent])

    def padded(ids: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(ids), max(len(x) for x in ids)), dtype=np.int64)
        for k, x in enumerate(ids):
            out[k, : len(x)] = x
        return out

    phrases = [t.format(q=q) for cat in CATEGORIES for t in templates for q in cat.queries]
    vocabulary, phrase_code = np.unique(np.array(phrases), return_inverse=True)
    held_set = {templates[t] for ids in held_ids for t in ids}
    heldout = {t.format(q=q) for cat in CATEGORIES for t in held_set for q in cat.queries}
    usual = {
        t.format(q=q)
        for cat in CATEGORIES
        for t in templates
        if t not in held_set
        for q in cat.queries
    }
    if heldout & usual:  # a held-out phrasing must never be produced by a usual template
        raise ValueError(
            f"held-out phrasings collide with usual ones: {sorted(heldout & usual)[:5]}"
        )
    return _Phrasebook(
        phrase_code=phrase_code,
        vocabulary=vocabulary,
        seen=padded(seen_ids),
        n_seen=np.array([len(x) for x in seen_ids]),
        held=padded(held_ids),
        n_held=np.array([len(x) for x in held_ids]),
        n_templates=len(templates),
        heldout_phrases=tuple(sorted(heldout)),
    )


PHRASEBOOK = _build_phrasebook()


def _intent_queries(
    intent: np.ndarray,
    category: np.ndarray,
    late: np.ndarray,
    unseen_share: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Phrase codes and vocabulary for searches of `intent` in `category`.

    A search at or after novelty (`late`) takes a held-out phrasing with probability
    `unseen_share`; every other search takes a usual one, so held-out phrasings occur only late.
    """
    book = PHRASEBOOK
    n = len(intent)
    heldout = late & (rng.random(n) < unseen_share)
    u = rng.random(n)
    usual = book.seen[intent, (u * book.n_seen[intent]).astype(np.int64)]
    new = book.held[intent, (u * book.n_held[intent]).astype(np.int64)]
    template = np.where(heldout, new, usual)
    noun = rng.integers(0, 3, size=n)
    code = (category * book.n_templates + template) * 3 + noun
    return book.phrase_code[code], book.vocabulary


def _timestamps(start: pd.Timestamp, ms: np.ndarray) -> pd.Series:
    """UTC timestamps `ms` milliseconds after `start`."""
    return pd.Series(
        pd.DatetimeIndex(start + pd.to_timedelta(ms, unit="ms")), dtype="datetime64[ns, UTC]"
    )


# --- files -------------------------------------------------------------------------------------


def write_market(market: Market, out_dir: str | Path, fmt: str = "parquet") -> dict[str, Path]:
    """Write the four tables with `pricing.io.write_table` and the truth under `ground_truth/`.

    Returns:
        Paths by table name, plus "ground_truth" for the truth's folder.
    """
    out_dir = Path(out_dir)
    paths = {name: write_table(df, out_dir, name, fmt=fmt) for name, df in market.tables.items()}
    paths[GROUND_TRUTH_DIR] = market.truth.save(out_dir / GROUND_TRUTH_DIR)
    return paths


# Children of the market's seed sequence that `simulate` leaves alone (it spawns 0-4): what a
# market written in parts decides once for the whole market, and each bucket's streams.
_MARKET_STREAM = 5
_BUCKET_STREAM = 6
PARTITIONED_TABLES: tuple[str, ...] = (S.EVENTS, S.OFFERS, S.USERS)


@dataclass(frozen=True)
class WrittenMarket:
    """What `write_market_partitioned` wrote: paths by table (a dataset folder for the tables
    written in parts, and "ground_truth" for the truth's folder) and the rows of each table."""

    paths: dict[str, Path]
    rows: dict[str, int]
    partitions: int


def bucket_sizes(n_users: int, partitions: int) -> np.ndarray:
    """Users per bucket: `n_users` split into `partitions` buckets differing by at most one."""
    if not 1 <= partitions <= n_users:
        raise ValueError(f"partitions must be in [1, n_users={n_users}], got {partitions}")
    return np.full(partitions, n_users // partitions) + (
        np.arange(partitions) < n_users % partitions
    )


def _bucket_streams(seed: int, bucket: int) -> _Streams:
    """Bucket `bucket`'s own streams, from (seed, bucket) alone: the same for any memory or
    number of buckets before it."""
    return _streams(np.random.SeedSequence(seed, spawn_key=(_BUCKET_STREAM, bucket)))


def _bucket_users(
    config: SimConfig, n_users: int, first_user: int, width: int, rngs: _Streams
) -> tuple[SimConfig, dict[str, Any]]:
    """The config of a bucket of `n_users` users (the market's, with its size) and their traits,
    with user ids numbered from `first_user` (`width` digits: the whole market's)."""
    config_b = replace(config, n_users=int(n_users))
    us = _simulate_users(config_b, rngs.users, rngs.real_users)
    us["user_ids"] = np.asarray(_format_ids("u", n_users, width, start=first_user), dtype=str)
    return config_b, us


def _market_novelty_ms(config: SimConfig, sizes: np.ndarray) -> int:
    """`_novelty_start_ms` of a market written in buckets, from the earliest session of any
    user there from the start, in any bucket.

    A first pass draws each bucket's users and session starts from the bucket's streams, the
    same draws the bucket makes again when it is written, and keeps only the minimum: one
    bucket's users in memory at a time.
    """
    earliest: int | None = None
    for b, n_b in enumerate(sizes):
        rngs = _bucket_streams(config.seed, b)
        config_b, us = _bucket_users(config, int(n_b), 0, 6, rngs)
        _, sess_user, sess_start = _session_starts(config_b, us["activity"], rngs.sessions)
        old = sess_start[~us["new"][sess_user]]
        if len(old):
            earliest = int(old.min()) if earliest is None else min(earliest, int(old.min()))
    return _novelty_start_ms(config, np.array([] if earliest is None else [earliest], np.int64))


def _id_widths(config: SimConfig) -> tuple[int, int, int]:
    """Digits of session, offer and event ids in a market written in buckets: `simulate`'s, or
    enough for twice the market's expected count, so every bucket's ids have the same width
    (text order = number order) unless the market runs far past its expected size."""
    sessions = 2.0 * config.n_users * config.sessions_per_user_week * config.n_days / 7.0
    offers = sessions * config.offers_per_session
    events = 2.0 * sessions + 4.0 * offers  # searches, then view, click, cart, purchase
    return tuple(  # type: ignore[return-value]
        max(default, len(str(int(np.ceil(expected)))))
        for default, expected in ((7, sessions), (7, offers), (8, events))
    )


def _clear_market(out_dir: Path) -> None:
    """Remove what an earlier market in `out_dir` would mix into one written in parts: files of
    the partitioned tables (read before a folder), their old parts, and the ground truth (its
    meta.json first, so a write that stops part-way leaves no truth that loads)."""
    truth_dir = out_dir / GROUND_TRUTH_DIR
    for name in ("meta.json", "arrays.npz", "user_traits.parquet"):
        (truth_dir / name).unlink(missing_ok=True)
    for pattern in (
        f"{GroundTruth.USER_PARTS_DIR}/part-*.npz",
        f"{GroundTruth.USER_TRAITS_DIR}/part-*.parquet",
    ):
        for old in truth_dir.glob(pattern):
            old.unlink()
    for table in PARTITIONED_TABLES:
        for suffix in SUFFIXES:
            (out_dir / f"{table}{suffix}").unlink(missing_ok=True)
        for old in (out_dir / table).glob("part-*"):
            old.unlink()


def write_market_partitioned(
    config: SimConfig, out_dir: str | Path, partitions: int, fmt: str = "parquet"
) -> WrittenMarket:
    """Simulate a market in `partitions` buckets of users and write it bucket by bucket, so that
    memory holds one bucket at a time, never the whole market (its ground truth included).

    The catalog is drawn once, from `simulate`'s streams (the same items as `simulate(config)`),
    and written as items.parquet. What couples users is decided once for the whole market: when
    novelty starts (from the earliest session in any bucket, found by a first pass over the
    buckets' users and session starts), when cold items arrive, which phrasings are held out.
    Then bucket b draws its users and their sessions, events and offers from its own streams
    (derived from the seed and b), writes them as partition b of users/, events/ and offers/
    (`pricing.io.write_part`) and its users' truth as part b of ground_truth/ (item-level truth
    and meta.json come last), and is dropped before the next bucket.

    Each bucket is a market of about n_users / partitions users on the shared catalog and
    period, so its statistics are those of a market of that size. Every user's behaviour is in
    one partition; user, session, offer and event ids are numbered on from one bucket to the
    next, so none repeats. The result depends on (config, partitions) only; beyond the catalog
    it is not the market `simulate(config)` draws.

    Args:
        config: the market (its `n_users` is the total over all buckets).
        out_dir: folder for the tables and ground_truth/; earlier files of the same tables
            there are removed first.
        partitions: number of buckets, 1 to `config.n_users`.
        fmt: "parquet" (partitions are written as Parquet only).

    Returns:
        The paths and the rows written per table.
    """
    if fmt != "parquet":
        raise ValueError(f"a market written in partitions is Parquet only, got format {fmt!r}")
    sizes = bucket_sizes(config.n_users, partitions)
    out_dir = Path(out_dir)
    truth_dir = out_dir / GROUND_TRUTH_DIR
    _clear_market(out_dir)

    root = _streams(np.random.SeedSequence(config.seed))
    items, it = _simulate_catalog(config, root.items, root.real_items)
    novelty_ms = config.n_days * _DAY_MS
    item_arrival = np.zeros(len(it["category"]), dtype=np.int64)
    if config.has_novelty:
        novelty_ms = _market_novelty_ms(config, sizes)
        market_rng = np.random.default_rng(
            np.random.SeedSequence(config.seed, spawn_key=(_MARKET_STREAM,))
        )
        item_arrival = _item_arrivals(config, it["cold"], novelty_ms, market_rng)
    paths = {S.ITEMS: write_table(items, out_dir, S.ITEMS, fmt=fmt)}
    rows = {S.ITEMS: len(items), S.EVENTS: 0, S.OFFERS: 0, S.USERS: 0}
    del items

    user_width = max(6, len(str(config.n_users - 1)))
    widths = _id_widths(config)
    first_user, n_sessions = 0, 0
    truth: GroundTruth | None = None
    for b, n_b in enumerate(sizes):
        rngs = _bucket_streams(config.seed, b)
        config_b, us = _bucket_users(config, int(n_b), first_user, user_width, rngs)
        truth = _make_truth(config, it, us)
        bucket = _Bucket(
            novelty_ms=novelty_ms,
            item_arrival_ms=item_arrival,
            first_session=n_sessions,
            first_offer=rows[S.OFFERS],
            first_event=rows[S.EVENTS],
            widths=widths,
        )
        events, offers, novelty = _simulate_behaviour(
            config_b, truth, it, us, rngs.sessions, rngs.offers, rngs.real_sessions, bucket
        )
        _record_novelty(truth, config, novelty)
        tables = {S.EVENTS: events, S.OFFERS: offers, S.USERS: _users_table(us)}
        for name, df in tables.items():
            write_part(df, out_dir, name, b)
            rows[name] += len(df)
        truth.save_user_part(truth_dir, b)
        first_user += int(n_b)
        n_sessions += int(novelty["n_sessions"])
        del events, offers, tables, us, novelty  # one bucket in memory at a time

    assert truth is not None  # at least one bucket
    truth.save_catalog(truth_dir, partitions)
    paths.update({name: out_dir / name for name in PARTITIONED_TABLES})
    paths[GROUND_TRUTH_DIR] = truth_dir
    return WrittenMarket(paths=paths, rows=rows, partitions=partitions)


def load_ground_truth(data_dir: str | Path) -> GroundTruth | None:
    """The ground truth saved next to a simulated market, or None for data without one."""
    directory = Path(data_dir) / GROUND_TRUTH_DIR
    if not (directory / "meta.json").exists():
        return None
    return GroundTruth.load(directory)
