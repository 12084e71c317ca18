"""The worker's web view: status and health, a live dashboard, Prometheus metrics, and "why this item" per user.

Pages (all served by Faust's web server, assets shipped in stream_app/stream/static, nothing from a CDN):
  /                  status: 200 when the worker serves, 503 with the problems otherwise; links to the pages
  /health            the same as JSON (agents crash-looping or stuck, store stuck, a partition waiting too long to
                     re-read a skipped offset, encoder not loaded -> 503)
  /dashboard[/]      live charts and tables (polls /api/dashboard every 2 s)
  /api/dashboard     everything the dashboard shows, as JSON
  /metrics           Prometheus text format: the service's own metrics and Faust's (PrometheusMonitor)
  /stats/            counters and latency percentiles as JSON
  /users/<id>[/]     HTML, or JSON with ?format=json / an Accept header without text/html
"""

from __future__ import annotations

import html
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import numpy as np
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stream_app.adapters.kafka_admin import LazyAdmin, group_offsets
from stream_app.core import collab
from stream_app.stream.explain import attention_weights, because, cooc_contributions, score_parts
from stream_app.core.interest import consumed_items, decode_state, interest_vectors
from stream_app.stream.metrics import MetricsCollector
from stream_app.stream.webauth import user_data_guard

if TYPE_CHECKING:
    from stream_app.stream.pipeline import Pipeline
    from stream_app.settings import Settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".js": "application/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml"}
RECENT_SHOWN = 20
SAMPLE_EVERY_S = 2.0
STATE_EVERY_S = 10.0


def json_bytes(obj: Any) -> bytes:
    """UTF-8 JSON with readable non-ASCII text (Chinese stays Chinese)."""
    return json.dumps(obj, ensure_ascii=False, indent=1, default=str).encode()


def typed(view: View, body: bytes, content_type: str, status: int = 200, **headers: str) -> Response:
    """A response with an explicit charset (Faust's view.bytes cannot set one)."""
    return view.bytes(body, status=status, headers={"Content-Type": content_type, **headers})


JSON_TYPE = "application/json; charset=utf-8"


def wants_json(request: Request) -> bool:
    """?format=json|html wins; else JSON unless the client asks for text/html (browsers do, curl does not)."""
    fmt = request.query.get("format")
    if fmt in ("json", "html"):
        return fmt == "json"
    return "text/html" not in request.headers.get("Accept", "")


# ---- the user page ---------------------------------------------------------------------------------------------
async def explain_user(pipeline: Pipeline, raw_state: bytes | None, user_id: str) -> dict[str, Any]:
    """A user's interest slots, recent items with their attention per slot, and the last list with score parts."""
    out: dict[str, Any] = {"user_id": user_id, "known": raw_state is not None}
    state = decode_state(raw_state) if raw_state else None
    # No state, no list: a user forgotten (or never seen) is shown nothing, even if this worker still held a list
    # it sent when it owned the user's partition.
    if state is None:
        return out
    rec = pipeline.last_recommendations.get(user_id)
    slot_vecs, slot_weights = interest_vectors(state, state.last_ts, pipeline.params)
    recent = consumed_items(state)[-RECENT_SHOWN:]
    rec_ids = [i["item_id"] for i in rec.items] if rec is not None else []
    records = await pipeline.records_for(sorted(set(recent) | set(rec_ids))) if pipeline.store else {}
    vectors = {i: r.vector for i, r in records.items()}
    # The list's titles (cut to LIST_TITLE_CHARS) only for items the store no longer holds.
    titles = {i["item_id"]: i.get("title", "") for i in (rec.items if rec else []) if i.get("title")}
    titles.update({i: r.payload.get("title", "") for i, r in records.items()})
    shown = [i for i in recent if i in vectors]
    att = attention_weights(np.stack([vectors[i] for i in shown]) if shown else np.zeros((0, state.dim)),
                            slot_vecs, pipeline.params.temperature)
    behaviours = []
    for n, item_id in enumerate(reversed(recent)):
        row = {"item_id": item_id, "title": titles.get(item_id, ""), "attention": None, "slot": None}
        if item_id in vectors and len(slot_weights):
            a = att[shown.index(item_id)]
            cos = slot_vecs @ vectors[item_id] / max(float((vectors[item_id] ** 2).sum()) ** 0.5, 1e-12)
            row.update(attention=[round(float(x), 4) for x in a], slot=int(cos.argmax()))
        behaviours.append(row)
    out.update({
        "events": state.n_events,
        "last_ts": state.last_ts,
        "slots": state.n_slots,
        "usable_slot_weights": [round(float(w), 4) for w in slot_weights],
        "recent_items": consumed_items(state)[-RECENT_SHOWN:],
        "behaviours": behaviours,
        "attention_note": "a_jk = softmax over the recent items shown of cos(e_j, u_k)/tau, per slot k "
                          "(the slot's current interest as the query; type weights and age decay are folded "
                          "into the state's sums and not kept per event)",
    })
    if rec is not None:
        out["last_recommendation"] = {"strategy": rec.strategy, "slot_weights": rec.slot_weights, "items": rec.items}
        recent_all = consumed_items(state)
        recent_vecs = {i: vectors[i] for i in recent if i in vectors}
        why = []
        for item in rec.items:
            j = item["item_id"]
            contributions = cooc_contributions(pipeline.collab, recent_all, j, pipeline.cparams)
            pop = float(collab.popularity(pipeline.collab, [j])[0])
            parts = score_parts(vectors.get(j), slot_vecs if slot_vecs is not None else [], slot_weights, recent_vecs,
                                contributions, pop)
            for c in parts["cooc_from"]:
                c["title"] = titles.get(c["item_id"], "")
            if parts["most_similar_recent"]:
                parts["most_similar_recent"]["title"] = titles.get(parts["most_similar_recent"]["item_id"], "")
            reason = because(parts, titles, item.get("why", {}).get("support"), pipeline.rparams.cold_support)
            why.append({**item, "parts": parts, "because": reason})
        out["why"] = why
    return out


def _bar(value: float | None, width: int = 80) -> str:
    if value is None:
        return "<span class='muted'>–</span>"
    pct = max(0.0, min(1.0, float(value))) * 100
    return (f"<span class='bar' style='width:{width}px'><span style='width:{pct:.1f}%'></span></span>"
            f"<span class='num'>{value:.2f}</span>")


def render_user_page(data: dict[str, Any]) -> str:
    """The user page as HTML (server-side; no script needed)."""
    e = html.escape
    user = e(data["user_id"])
    parts = [f"<header><a href='/dashboard'>← dashboard</a><h1>User <span class='mono'>{user}</span></h1>"]
    if not data.get("known") and "last_recommendation" not in data:
        parts.append("<p>This worker holds no state for this user (unknown user, or another worker owns the "
                     "partition).</p></header>")
        return page(f"user {data['user_id']}", "".join(parts))
    weights = data.get("usable_slot_weights", [])
    ts = data.get("last_ts")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "–"
    parts.append(f"<p class='sub'>{data.get('events', 0)} events · last event {e(when)} · "
                 f"{len(weights)} usable interest slot(s) of {data.get('slots', 0)}</p></header>")
    if weights:
        slot_cells = "".join(f"<th>slot {k + 1}<br><small>weight {w:.2f}</small></th>" for k, w in enumerate(weights))
        parts.append("<section><h2>Recent behaviour and its attention weight in each interest slot</h2>"
                     f"<p class='note'>{e(data.get('attention_note', ''))}</p>"
                     f"<table class='att'><tr><th>#</th><th>item</th>{slot_cells}</tr>")
        for n, b in enumerate(data.get("behaviours", []), 1):
            cells = "".join(
                f"<td class='{'own' if b['slot'] == k else ''}'>{_bar(b['attention'][k] if b['attention'] else None)}"
                "</td>" for k in range(len(weights)))
            parts.append(f"<tr><td>{n}</td><td>{e(b['title'] or '')} <span class='mono muted'>{e(b['item_id'])}"
                         f"</span></td>{cells}</tr>")
        parts.append("</table><p class='note'>Newest first; the highlighted cell is the slot the item belongs to "
                     "(highest cosine).</p></section>")
    elif data.get("known"):
        parts.append("<section><p>No usable interest yet (only dislikes, or no events): the user gets the most "
                     "popular items.</p></section>")
    rec = data.get("last_recommendation")
    if rec:
        parts.append(f"<section><h2>Last list sent <small>({e(rec['strategy'])})</small></h2><table class='why'>"
                     "<tr><th>#</th><th>item</th><th>score</th><th>text affinity per slot</th>"
                     "<th>co-occurrence (from)</th><th>popularity</th><th>why</th></tr>")
        for n, item in enumerate(data.get("why", []), 1):
            p = item["parts"]
            text = " · ".join(f"<span class='{'best' if k == p.get('text_slot') else ''}'>s{k + 1} {v:.3f}</span>"
                              for k, v in enumerate(p["text_by_slot"])) or "–"
            froms = "<br>".join(f"{c['contribution']:.3f} ← {e(c['title'] or c['item_id'])}"
                                for c in p["cooc_from"][:3])
            cooc = f"<b>{p['cooc']:.3f}</b><br><small>{froms}</small>" if p["cooc"] else "–"
            parts.append(f"<tr><td>{n}</td><td>{e(item.get('title') or '')} <span class='mono muted'>"
                         f"{e(item['item_id'])}</span></td><td class='num'>{item['score']:.4g}</td><td>{text}</td>"
                         f"<td>{cooc}</td><td class='num'>{p['popularity']:g}</td>"
                         f"<td>because {e(item['because'])}</td></tr>")
        parts.append("</table><p class='note'>Score = the blend of stream_app.core.ranking.rank when the list was "
                     "sent (text affinity = max over slots of weight × cosine; co-occurrence summed over the recent "
                     "items, ItemKNN-style; directed sequence; popularity = decayed count; little-known items "
                     "boosted); the parts shown are recomputed with the counters as they are now.</p></section>")
    parts.append(f"<p class='note'><a href='?format=json'>as JSON</a></p>")
    return page(f"user {data['user_id']}", "".join(parts))


def page(title: str, body: str, scripts: tuple[str, ...] = ()) -> str:
    tags = "".join(f"<script src='/static/{s}' defer></script>" for s in scripts)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)} · stream_app"
            f"</title><meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link rel='stylesheet' href='/static/style.css'>{tags}</head><body>{body}</body></html>")


# ---- dashboard data ----------------------------------------------------------------------------------------------
def dashboard_data(pipeline: Pipeline, settings: Settings) -> dict[str, Any]:
    m = pipeline.metrics
    enc = pipeline.encoder
    latest = []
    for user_id, rec in list(reversed(pipeline.last_recommendations.items()))[:8]:
        latest.append({"user_id": user_id, "strategy": rec.strategy,
                       "items": [{"item_id": i["item_id"], "title": i.get("title", "")} for i in rec.items[:5]]})
    return {
        "now": time.time(),
        "health": m.health(),
        "info": {"app_id": settings.app_id, "model": enc.manifest.name if enc else settings.model_name,
                 "provider": enc.provider if enc else None, "dim": enc.dim if enc else None,
                 "graph": "int8" if settings.encoder_int8 else "fp32",
                 "store": "qdrant server" if settings.qdrant_url else "embedded qdrant-edge",
                 "partitions": settings.topic_partitions, "top_k": settings.top_k},
        "counters": m.snapshot(),
        "series": list(m.series),
        "online": m.online.snapshot(),
        "dead_letters": list(reversed(m.dead_letter_log))[:15],
        "latest": latest,
    }


def consumer_lag(app: faust.App, topics: set[str], committed: dict[tuple[str, int], int]) -> dict[str, int]:
    """Messages behind the end of each assigned input partition ("topic[p]" -> n).

    The position is the later of this worker's last read offset + 1 and the group's committed offset (read from
    the broker: after a rebalance a worker holds partitions it has not read yet). Partitions without a known end
    or position are left out rather than guessed.
    """
    out: dict[str, int] = {}
    try:
        consumer = app.consumer
        assignment = consumer.assignment()
    except Exception:  # noqa: BLE001 - not started yet (Faust and aiokafka raise several kinds)
        log.debug("no consumer assignment yet", exc_info=True)
        return out
    read = app.monitor.tp_read_offsets if app.monitor else {}
    for tp in assignment:
        if tp.topic not in topics:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - no fetch yet for this partition
            log.debug("no highwater for %s yet", tp, exc_info=True)
            continue
        known = [v for v in (read[tp] + 1 if tp in read else None, committed.get((tp.topic, tp.partition)))
                 if v is not None]
        if high is not None and not known and int(high) == 0:
            known = [0]  # an empty partition: nothing to be behind on
        if high is None or not known:
            continue
        out[f"{tp.topic}[{tp.partition}]"] = max(int(high) - max(known), 0)
    return out


def table_size(table: faust.types.TableT) -> int:
    """Keys in this worker's active partitions of a table: RocksDB's own estimate (O(1); counting would scan every
    key on the event loop), the exact count for other stores."""
    dbs = getattr(table.data, "_dbs_for_actives", None)  # faust.stores.rocksdb.Store
    if callable(dbs):
        try:
            return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in dbs())
        except (AttributeError, TypeError):  # python-rocksdb instead of rocksdict: count below
            pass
    return len(table)


# ---- registration ------------------------------------------------------------------------------------------------
def register_pages(app: faust.App, pipeline: Pipeline, user_state: faust.types.TableT, settings: Settings,
                   admin: LazyAdmin, inputs: tuple[faust.TopicT, ...] = ()) -> None:
    """Declare the web view's pages, the Prometheus endpoint and the metrics sampler on the app."""
    input_names = {t.get_topic_name() for t in inputs}
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MetricsCollector(pipeline.metrics))
    try:  # Faust's own counters (messages, events, commits, rebalances ...) into the same registry
        from faust.sensors.prometheus import PrometheusMonitor
        from faust.sensors.prometheus import FaustMetrics

        app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, "faust"))
    except Exception as exc:  # noqa: BLE001 - the service's own metrics still work
        log.warning("Faust's Prometheus sensor is unavailable: %s", exc)

    def status_response(view: View, request: Request) -> Response:
        health = pipeline.metrics.health()
        status = 200 if health["ok"] else 503
        body = {"status": "OK" if health["ok"] else "FAILING", **health,
                "pages": {"dashboard": "/dashboard", "metrics": "/metrics", "health": "/health", "stats": "/stats/",
                          "user": "/users/<user_id>"}}
        return typed(view, json_bytes(body), JSON_TYPE, status)

    @app.page("/")
    class Index(View):
        """Status (200 / 503) with links to the pages; a small HTML page for browsers."""

        async def get(self, request: Request) -> Response:
            if wants_json(request):
                return status_response(self, request)
            health = pipeline.metrics.health()
            items = "".join(f"<li>{html.escape(p)}</li>" for p in health["problems"])
            body = (f"<header><h1>stream_app <span class='badge {'ok' if health['ok'] else 'bad'}'>"
                    f"{'serving' if health['ok'] else 'not serving'}</span></h1></header><section><ul>{items}</ul>"
                    "<p><a href='/dashboard'>Dashboard</a> · <a href='/metrics'>Prometheus metrics</a> · "
                    "<a href='/health'>health</a> · <a href='/stats/'>stats</a></p></section>")
            return self.html(page("status", body), status=200 if health["ok"] else 503)

    @app.page("/health")
    class Health(View):
        """200 while the worker can serve; 503 with the reasons otherwise."""

        async def get(self, request: Request) -> Response:
            return status_response(self, request)

    @app.page("/stats/")
    class Stats(View):
        """Counters and event -> recommendation latency percentiles, as JSON."""

        async def get(self, request: Request) -> Response:
            return typed(self, json_bytes({**pipeline.metrics.snapshot(), "model": pipeline.encoder.manifest.name
                                           if pipeline.encoder else None}), JSON_TYPE)

    @app.page("/metrics")
    class Metrics(View):
        """Prometheus text exposition format."""

        async def get(self, request: Request) -> Response:
            return typed(self, generate_latest(registry), CONTENT_TYPE_LATEST)

    @app.page("/api/dashboard")
    class DashboardData(View):
        """Everything the dashboard shows; it names users (latest lists, dead-letter keys), so it is guarded."""

        @user_data_guard(settings)
        async def get(self, request: Request) -> Response:
            return typed(self, json_bytes(dashboard_data(pipeline, settings)), JSON_TYPE)

    dashboard_html = page("dashboard", (STATIC / "dashboard.html").read_text("utf-8"), scripts=("dashboard.js",))

    @app.page("/dashboard")
    class Dashboard(View):
        """The dashboard shell (its data comes from /api/dashboard); guarded like the data, which names users."""

        @user_data_guard(settings)
        async def get(self, request: Request) -> Response:
            return self.html(dashboard_html)

    @app.page("/dashboard/")
    class DashboardSlash(Dashboard):
        pass

    @app.page("/static/{name}")
    class Static(View):
        async def get(self, request: Request, name: str) -> Response:
            path = STATIC / name
            if name not in {p.name for p in STATIC.iterdir()} or path.suffix not in STATIC_TYPES:
                return self.notfound()
            return typed(self, path.read_bytes(), STATIC_TYPES[path.suffix], **{"Cache-Control": "max-age=60"})

    async def user_page(web: View, request: Request, user_id: str) -> Response:
        data = await explain_user(pipeline, user_state.get(user_id), user_id)
        if wants_json(request):
            return typed(web, json_bytes(data), JSON_TYPE)
        return web.html(render_user_page(data))

    @app.page("/users/{user_id}/")
    @user_data_guard(settings)
    @app.table_route(table=user_state, match_info="user_id")
    async def user_view(web: Any, request: Request, user_id: str) -> Response:
        """Why this user gets what they get (routed to the worker that owns the user's partition)."""
        return await user_page(web, request, user_id)

    @app.page("/users/{user_id}")
    @user_data_guard(settings)
    @app.table_route(table=user_state, match_info="user_id")
    async def user_view_noslash(web: Any, request: Request, user_id: str) -> Response:
        return await user_page(web, request, user_id)

    state: dict[str, Any] = {"last_state_refresh": 0.0, "committed": {}, "catalogue_writes": None}

    @app.timer(SAMPLE_EVERY_S)
    async def sample_metrics() -> None:
        """Refresh state sizes and committed offsets (every 10 s, and as soon as the catalogue was written to) and
        lag, then add a point to the series."""
        m = pipeline.metrics
        now = time.monotonic()
        writes = (m.items_indexed, m.items_deleted)
        due = now - state["last_state_refresh"] >= STATE_EVERY_S or writes != state["catalogue_writes"]
        if due and m.ready and pipeline.store is not None:
            state["last_state_refresh"], state["catalogue_writes"] = now, writes
            try:
                with m.store_call("count"):
                    m.observe_catalogue_size(await pipeline.store.count())
                m.observe_users(table_size(user_state))
                state["committed"] = await group_offsets(await admin.get(), app.conf.id)
            except Exception as exc:  # noqa: BLE001 - a failed refresh must not stop the sampler
                log.warning("state size / offsets refresh failed: %s", exc)
        m.observe_lag(consumer_lag(app, input_names, state["committed"]))
        m.sample()
