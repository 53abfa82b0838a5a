"""The data contract: table names, column names and their logical types, in one place.

Everything that reads or writes a contract table (simulator, Ta Feng builder, validation,
features, scorer offer log) names columns through these constants.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- table names -------------------------------------------------------------------------------
ITEMS = "items"
EVENTS = "events"
OFFERS = "offers"
USERS = "users"
TABLES: tuple[str, ...] = (ITEMS, EVENTS, OFFERS, USERS)
REQUIRED_TABLES: tuple[str, ...] = (ITEMS, EVENTS, OFFERS)

# --- column names ------------------------------------------------------------------------------
ITEM_ID = "item_id"
TITLE = "title"
CATEGORY = "category"
BRAND = "brand"
LIST_PRICE = "list_price"
UNIT_COST = "unit_cost"
DESCRIPTION = "description"

EVENT_ID = "event_id"
TS = "ts"
USER_ID = "user_id"
SESSION_ID = "session_id"
EVENT_TYPE = "event_type"
QUERY = "query"
PRICE = "price"

OFFER_ID = "offer_id"
PURCHASED = "purchased"
PROPENSITY = "propensity"
POLICY = "policy"

AGE_GROUP = "age_group"
INCOME = "income"
REASON = "reason"

# --- event types -------------------------------------------------------------------------------
VIEW = "view"
CLICK = "click"
ADD_TO_CART = "add_to_cart"
PURCHASE = "purchase"
SEARCH = "search"
EVENT_TYPES: tuple[str, ...] = (VIEW, CLICK, ADD_TO_CART, PURCHASE, SEARCH)


@dataclass(frozen=True)
class Column:
    """One contract column: its logical type and whether the contract requires it."""

    name: str
    dtype: str  # one of: "str", "float", "int", "timestamp"
    required: bool = True
    nullable: bool = False


# The columns of each table, in canonical order. Extra columns a shop brings are kept as they are.
CONTRACT: dict[str, tuple[Column, ...]] = {
    ITEMS: (
        Column(ITEM_ID, "str"),
        Column(TITLE, "str"),
        Column(CATEGORY, "str"),
        Column(BRAND, "str", nullable=True),
        Column(LIST_PRICE, "float"),
        Column(UNIT_COST, "float"),
        Column(DESCRIPTION, "str", required=False, nullable=True),
    ),
    EVENTS: (
        Column(EVENT_ID, "str"),
        Column(TS, "timestamp"),
        Column(USER_ID, "str"),
        Column(SESSION_ID, "str"),
        Column(EVENT_TYPE, "str"),
        Column(ITEM_ID, "str", nullable=True),  # null only for search
        Column(QUERY, "str", nullable=True),
        Column(PRICE, "float", nullable=True),  # null for search
    ),
    OFFERS: (
        Column(OFFER_ID, "str"),
        Column(TS, "timestamp"),
        Column(USER_ID, "str"),
        Column(ITEM_ID, "str"),
        Column(PRICE, "float"),
        Column(PURCHASED, "int"),
        Column(PROPENSITY, "float", nullable=True),
        Column(POLICY, "str"),
    ),
    USERS: (Column(USER_ID, "str"),),
}

# User attributes that must never reach a model; they are used only to report price dispersion.
PROTECTED_ATTRIBUTES: tuple[str, ...] = (AGE_GROUP, INCOME)

# The unique key of each table.
PRIMARY_KEYS: dict[str, str] = {ITEMS: ITEM_ID, EVENTS: EVENT_ID, OFFERS: OFFER_ID, USERS: USER_ID}


def column_names(table: str, required_only: bool = False) -> list[str]:
    """Names of a table's contract columns, in canonical order."""
    return [c.name for c in CONTRACT[table] if c.required or not required_only]
