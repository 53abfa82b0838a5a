"""The scorer's routes, kept thin: `/v1` (quote, events, outcomes) and the operations routes
(reload, health, readiness, metrics). The work is in `scorer.serving` and `scorer.runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pricing import schema as S
from pricing.experiment import ARM, EXPERIMENT
from scorer.deps import ModelDep, RuntimeDep, require_admin
from scorer.experiment import CHAMPION_ARM
from scorer.offer_log import OutcomeConflict
from scorer.runtime import ScorerRuntime, log_store_failure, short_error
from scorer.schemas import (
    EventsRequest,
    EventsResponse,
    OutcomeRequest,
    OutcomeResponse,
    QuoteRequest,
    QuoteResponse,
    ReloadResponse,
    shown,
)
from scorer.serving import QuoteError, ServingModel

log = logging.getLogger("scorer.app")  # one name for the scorer's log, as before the split


def is_json(content_type: bytes | str | None) -> bool:
    """Whether a request's content type declares JSON: `application/json` or
    `application/<anything>+json`, parameters such as a charset aside.

    A body without a content type is not JSON either, as FastAPI's strict content type has it (a
    browser can send such a body cross-site without a CORS preflight).
    """
    if not content_type:
        return False
    raw = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    media = raw.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def unsupported_media_type(content_type: bytes | str) -> HTTPException:
    raw = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    what = f"unsupported content type {shown(raw)}" if raw else "no content type"
    return HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        detail=f"{what}: send a JSON body with content-type: application/json",
    )


async def require_json(request: Request) -> None:
    """415 for a request not declared as JSON (before its body is validated)."""
    content_type = request.headers.get("content-type")
    if not is_json(content_type):
        raise unsupported_media_type(content_type or "")


v1 = APIRouter(
    prefix="/v1",
    tags=["pricing"],
    dependencies=[Depends(require_json)],
    responses={415: {"description": "the body is not declared as JSON"}},
)


# The quote and event routes are async and do their short store round trips and CPU work on the
# event loop (a thread-pool hop per request costs more than it saves); the user tower runs in a
# worker thread when a quote needs it. `FastPath` serves the common well-formed request without
# FastAPI's routing and pydantic; these routes serve everything else (same code, same answers).


async def answer_quote(
    runtime: ScorerRuntime,
    sm: ServingModel,
    user_id: str,
    items: list[str],
    session_id: str | None,
) -> Response:
    """Price, log and answer one quote (shared by the route and the fast path).

    `sm` is the champion the request started with; with an experiment, the user's arm serves
    instead when it can (`ScorerRuntime.route`), and the quote names the experiment and the arm.
    """
    if len(items) > runtime.settings.max_candidates:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"too many candidate items: {len(items)} > max_candidates={runtime.settings.max_candidates}",
        )
    assert runtime.pricer is not None
    route = runtime.route(user_id, sm)
    sm = route.model
    try:
        q = await runtime.pricer.quote_async(sm, user_id, items, session_id, route.tags)
    except QuoteError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    runtime.metrics.quoted_items.inc(len(q.item_ids))
    explored = q.explored.tolist()
    if any(explored):
        runtime.metrics.explored_items.inc(sum(explored))
    if q.degraded:
        runtime.metrics.degraded.labels(reason=q.degraded_reason or "store_unavailable").inc()
    order = np.argsort(q.rank, kind="stable").tolist()
    price, lp, prob = q.price.tolist(), q.list_price.tolist(), q.probability.tolist()
    profit, rank, prop = q.expected_profit.tolist(), q.rank.tolist(), q.propensity.tolist()
    body = {
        "quote_id": q.quote_id,
        "model_name": sm.name,
        "model_version": sm.version,
        "personalized": q.personalized,
        "degraded": q.degraded,
        "degraded_reason": q.degraded_reason,
        "state_generation": q.state_generation,
        "currency": runtime.settings.currency,
        "items": [
            {
                "item_id": q.item_ids[k],
                "price": price[k],
                "list_price": lp[k],
                "purchase_probability": prob[k],
                "expected_profit": profit[k],
                "rank": int(rank[k]),
                "propensity": prop[k],
                "explored": bool(explored[k]),
                "guardrail": q.guardrail[k] if q.guardrail else None,
            }
            for k in order
        ],
    }
    if route.tags is not None:
        body["experiment"], body["arm"] = route.tags[EXPERIMENT], route.tags[ARM]
        runtime.metrics.arm_quotes.labels(body["experiment"], body["arm"]).inc()
    # Serialized here with orjson (the shape is QuoteResponse's, declared for the OpenAPI schema):
    # building and validating 50 pydantic models per quote costs more than pricing them.
    return Response(orjson.dumps(body), media_type="application/json")


async def record_events(runtime: ScorerRuntime, user_id: str, events: list[dict[str, Any]]) -> int:
    """Append events (`EventIn` fields as a dict each) to the user's history; returns the history
    generation after the append (shared by the route and the fast path).

    The append itself bumps the generation, which makes every cached state of the user stale (a
    state is served only with the generation it was computed from); the refresher then recomputes
    it off the request path.

    Raises:
        HTTPException: 503 when the store is unavailable (nothing was recorded).
    """
    now = datetime.now(UTC)
    rows = [
        {
            S.EVENT_ID: e["event_id"] or uuid.uuid4().hex,
            S.TS: (e["ts"] if e["ts"] is not None else now).isoformat(),
            S.USER_ID: user_id,
            S.SESSION_ID: e["session_id"] or "",
            S.EVENT_TYPE: e["event_type"],
            S.ITEM_ID: e["item_id"],
            S.QUERY: e["query"],
            S.PRICE: e["price"],
        }
        for e in events
    ]
    t = time.perf_counter()
    append_async = getattr(runtime.store, "append_events_async", None)
    try:
        if append_async is not None:  # (Redis) the event loop serves others meanwhile
            generation = await append_async(user_id, rows)
        else:
            generation = runtime.store.append_events(user_id, rows)
    except Exception as exc:  # noqa: BLE001 - the store is down: tell the caller to retry
        log_store_failure("appending events", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"user store unavailable, events not recorded; retry later: {exc}",
            headers={"Retry-After": "1"},
        ) from exc
    finally:
        if runtime.pricer is not None:
            runtime.pricer.stages.add("event_append", time.perf_counter() - t)
    if runtime.refresher is not None:
        runtime.refresher.mark(user_id)
    return generation


@v1.post("/quote", response_model=QuoteResponse)
async def quote(req: QuoteRequest, sm: ModelDep, runtime: RuntimeDep) -> Response:
    """Price and rank candidate items for a user.

    `state_generation` is the user's history generation the prices were computed from (compare it
    with the `generation` POST /v1/events returned to know whether an event is reflected); null
    when the store was unavailable.
    """
    return await answer_quote(runtime, sm, req.user_id, req.items, req.session_id)


@v1.post("/events", response_model=EventsResponse)
async def events(req: EventsRequest, runtime: RuntimeDep) -> EventsResponse:
    """Append behaviour to the user's online history; the user's state is recomputed right after."""
    generation = await record_events(runtime, req.user_id, [e.model_dump() for e in req.events])
    return EventsResponse(user_id=req.user_id, accepted=len(req.events), generation=generation)


@v1.post(
    "/outcomes",
    response_model=OutcomeResponse,
    responses={409: {"description": "the offer already has an outcome with the other label"}},
)
def outcomes(req: OutcomeRequest, runtime: RuntimeDep) -> OutcomeResponse:
    """Record whether a quoted item was bought; appended durably to the offer log.

    The first outcome of an offer (a quote and an item) stands, whichever worker it reached: the
    same report again answers 200 with `repeated: true` and writes nothing; the other label
    answers 409 and is not recorded.
    """
    assert runtime.pricer is not None
    offers = runtime.pricer.find_quote(req.quote_id)
    if offers is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"unknown quote_id {shown(req.quote_id)}"
        )
    offer = offers.get(req.item_id)
    if offer is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"item {shown(req.item_id)} was not part of quote {shown(req.quote_id)}",
        )
    try:
        offer_id, written = runtime.pricer.record_outcome(offer, req.purchased)
    except OutcomeConflict as exc:
        runtime.metrics.outcome_conflicts.inc()
        log.warning("outcome refused: %s", exc)
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    if not written:
        runtime.metrics.outcome_repeats.inc()
    return OutcomeResponse(offer_id=offer_id, repeated=not written)


ops = APIRouter(tags=["ops"])


@ops.post(
    "/admin/reload",
    response_model=ReloadResponse,
    response_model_exclude_unset=True,  # `arm` only on an arm's reload: the champion's is as before
    dependencies=[Depends(require_admin)],
)
async def admin_reload(
    runtime: RuntimeDep,
    arm: Annotated[
        str | None,
        Query(
            max_length=100,
            description="an experiment arm (its alias's version is reloaded), `all` for the "
            "champion and every arm; default: the champion",
        ),
    ] = None,
) -> ReloadResponse | JSONResponse:
    """Load the current champion (or an experiment arm), warm it and swap it in.

    On failure the champion's old model keeps serving; a failed arm is disabled (its users get the
    champion) and /readyz says why. Rolling an arm back is moving its alias back and reloading it.
    """
    if arm == "all":
        return await _reload_all(runtime)
    if arm is not None and arm != CHAMPION_ARM:
        return await _reload_arm(runtime, arm)
    try:
        sm, previous = await runtime.reload()
    except Exception as exc:  # noqa: BLE001 - report any load failure to the caller
        log.exception("reload failed")
        current = runtime.current
        return JSONResponse(
            status_code=status.HTTP_502_BAD_GATEWAY,
            content={
                "detail": f"reload failed: {type(exc).__name__}: {exc}",
                "serving_version": current.version if current is not None else None,
            },
        )
    return ReloadResponse(model_name=sm.name, model_version=sm.version, previous_version=previous)


def _unknown_arm(runtime: ScorerRuntime, arm: str) -> HTTPException:
    if runtime.split is None:
        return HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no experiment arm {shown(arm)}: no experiment is configured (PRICING_EXPERIMENT)",
        )
    known = ", ".join([CHAMPION_ARM, *runtime.arms, "all"])
    return HTTPException(
        status.HTTP_404_NOT_FOUND, detail=f"no experiment arm {shown(arm)}; the arms are: {known}"
    )


async def _reload_arm(runtime: ScorerRuntime, arm: str) -> ReloadResponse | JSONResponse:
    if arm not in runtime.arms:
        raise _unknown_arm(runtime, arm)
    previous = runtime.arms[arm].current
    try:
        sm, previous_version = await runtime.reload_arm(arm)
    except LookupError as exc:  # the alias was deleted: how an arm is switched off
        return JSONResponse(
            status_code=status.HTTP_404_NOT_FOUND,
            content={
                "detail": f"{exc}; the arm is disabled and its users get the champion",
                "arm": arm,
                "previous_version": previous.version if previous is not None else None,
            },
        )
    except Exception as exc:  # noqa: BLE001 - report any load failure to the caller
        return JSONResponse(
            status_code=status.HTTP_502_BAD_GATEWAY,
            content={
                "detail": f"reload of arm {arm!r} failed; the arm is disabled and its users get "
                f"the champion: {short_error(exc)}",
                "arm": arm,
                "serving_version": None,
            },
        )
    return ReloadResponse(
        model_name=sm.name, model_version=sm.version, previous_version=previous_version, arm=arm
    )


async def _reload_all(runtime: ScorerRuntime) -> JSONResponse:
    """The champion and every arm; 200 when all reloaded, else 502 with each one's outcome."""
    results: dict[str, Any] = {}
    names = [CHAMPION_ARM, *runtime.arms]
    for name in names:
        try:
            if name == CHAMPION_ARM:
                sm, previous = await runtime.reload()
            else:
                sm, previous = await runtime.reload_arm(name)
            results[name] = {
                "model_name": sm.name,
                "model_version": sm.version,
                "previous_version": previous,
            }
        except Exception as exc:  # noqa: BLE001 - each arm's outcome is reported
            results[name] = {"error": short_error(exc)}
    ok = all("error" not in r for r in results.values())
    return JSONResponse(
        status_code=status.HTTP_200_OK if ok else status.HTTP_502_BAD_GATEWAY,
        content={"arms": results},
    )


@ops.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@ops.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready once a model is loaded; otherwise 503 and why.

    A store outage keeps the answer 200 (quotes still answer, degraded) but says so:
    `"degraded": true` and `"store"` with the reason.

    Both answers carry the reload status: `alias_target` (the version the champion alias points
    at), `last_reload_error` (short, null after a success), `reload_failures` (in a row, same
    version) and `next_reload_retry_s` (the alias watch's backoff). A failed reload keeps the
    answer 200 while an older version serves: `model_version` != `alias_target` shows it.
    """
    sm = runtime.current
    reload_status = runtime.reload_status.as_dict()
    if sm is None:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"ready": False, "reason": runtime.not_ready_reason, **reload_status},
        )
    problem = await asyncio.to_thread(runtime.store_status)
    runtime.metrics.store_up.set(0 if problem else 1)
    return JSONResponse(
        {
            "ready": True,
            "model_name": sm.name,
            "model_version": sm.version,
            "degraded": problem is not None,
            "store": problem or "ok",
            # why the last offer log write failed (quotes and outcomes answer 503); null: healthy
            "offer_log_error": runtime.offer_log.last_error if runtime.offer_log else None,
            # what quotes run with, and who set it (operator environment > registered > default)
            "guardrails": sm.guardrails.to_dict(),
            "guardrail_sources": sm.guardrail_sources,
            # which implementation serves each per-request model step (scorer.accel)
            "serving_paths": sm.accel.notes if sm.accel is not None else {},
            # this process's offer-log files (one writer slot per process)
            "offer_log_writer": runtime.offer_log.slot if runtime.offer_log else None,
            **reload_status,
            **experiment_status(runtime, sm),
        }
    )


def experiment_status(runtime: ScorerRuntime, champion: ServingModel) -> dict[str, Any]:
    """/readyz's `experiment` and `arms` (nothing without an experiment)."""
    split = runtime.split
    if split is None:
        return {}
    served = split.served
    arms: list[dict[str, Any]] = [
        {
            "arm": CHAMPION_ARM,
            "alias": "champion",
            "share": dict(split.assignment)[CHAMPION_ARM],
            "share_source": "PRICING_EXPERIMENT"
            if split.config.champion_share is not None
            else "the rest",
            "served_share": round(served.get(CHAMPION_ARM, 0.0), 6),
            "status": "serving",
            "reason": None,
            "model_name": champion.name,
            "model_version": champion.version,
        }
    ]
    arms += [arm.as_dict(served.get(name, 0.0)) for name, arm in split.arms.items()]
    return {"experiment": split.config.experiment_id, "arms": arms}


@ops.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus exposition of this app's registry."""
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
