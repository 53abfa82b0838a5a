"""The model interface every demand model implements: `PricingData` in, purchase probabilities out.

Pure (numpy and pandas only), so the pricing core, the tabular baselines in `mlops.models`, the BERT
model in `lightning_modules` and the scorer all depend on it and it depends on none of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pricing import schema as S


@dataclass
class PricingData:
    """One split as models see it: its offers, their hand-built features, and the shared tables."""

    offers: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame
    features: pd.DataFrame | None = None
    users: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.offers)

    def list_price(self) -> np.ndarray:
        lp = self.items.set_index(S.ITEM_ID)[S.LIST_PRICE].astype(float)
        return lp.reindex(self.offers[S.ITEM_ID].astype(str)).to_numpy()

    def unit_cost(self) -> np.ndarray:
        uc = self.items.set_index(S.ITEM_ID)[S.UNIT_COST].astype(float)
        return uc.reindex(self.offers[S.ITEM_ID].astype(str)).to_numpy()


class DemandModel(ABC):
    """P(purchase) as a function of price, for offline evaluation and online serving."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        """Train; return training diagnostics worth logging."""

    @abstractmethod
    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        """Purchase probability for each offer of `data` at each price of `grid` (n, G)."""

    def predict(self, data: PricingData) -> np.ndarray:
        """Purchase probability at the offered price."""
        price = data.offers[S.PRICE].to_numpy(float)[:, None]
        return self.predict_grid(data, price)[:, 0]

    # --- serving -------------------------------------------------------------------------------
    @abstractmethod
    def user_state(self, events: pd.DataFrame) -> Any:
        """Summarize one user's recent events (contract columns) into what `demand` needs.

        Computed when the user has new events, cached by the scorer, never per quote.
        """

    @abstractmethod
    def demand(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """Purchase probability (n, G) for catalog rows `item_idx` at prices `grid`, given a user state."""

    def warm(self) -> None:  # noqa: B027 - optional hook
        """Precompute whatever serving needs (item vectors); called before a model takes traffic."""

    # --- persistence ---------------------------------------------------------------------------
    @abstractmethod
    def save(self, path: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> DemandModel:
        """Read what `save` wrote. Trusts the directory: `load_model` checks the files first."""
