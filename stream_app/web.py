"""Faust web view: a small dashboard, JSON metrics, and a per-user explanation of the interest and the last list."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View

from stream_app.interest import consumed_items, decode_state, interest_vectors
from stream_app.webauth import user_data_guard

if TYPE_CHECKING:
    from stream_app.pipeline import Pipeline
    from stream_app.settings import Settings


def explain_user(pipeline: Pipeline, raw_state: bytes | None, user_id: str) -> dict[str, Any]:
    """What the service knows about a user: interest slots and weights, recent items, and the last list sent."""
    out: dict[str, Any] = {"user_id": user_id, "known": raw_state is not None}
    if raw_state:
        state = decode_state(raw_state)
        _, weights = interest_vectors(state, state.last_ts, pipeline.params)
        out.update({
            "events": state.n_events,
            "last_ts": state.last_ts,
            "slots": state.n_slots,
            "usable_slot_weights": [round(float(w), 4) for w in weights],
            "recent_items": consumed_items(state)[-20:],
        })
    rec = pipeline.last_recommendations.get(user_id)
    if rec is not None:
        out["last_recommendation"] = {"strategy": rec.strategy, "slot_weights": rec.slot_weights, "items": rec.items}
    return out


def register_pages(app: faust.App, pipeline: Pipeline, user_state: faust.types.TableT, settings: Settings) -> None:
    """Declare the web view's pages on the app."""

    @app.page("/stats/")
    class Stats(View):
        """Counters and event -> recommendation latency percentiles, as JSON."""

        async def get(self, request: Request) -> Response:
            return self.json({**pipeline.metrics.snapshot(), "model": pipeline.encoder.manifest.name
                              if pipeline.encoder else None})

    @app.page("/users/{user_id}/")
    @user_data_guard(settings)
    @app.table_route(table=user_state, match_info="user_id")
    async def user_view(web: Any, request: Request, user_id: str) -> Response:
        """Why this user gets what they get (routed to the worker that owns the user's partition)."""
        return web.json(explain_user(pipeline, user_state.get(user_id), user_id))

    @app.page("/dashboard/")
    class Dashboard(View):
        """A human-readable page: metrics and the latest lists per user."""

        @user_data_guard(settings)
        async def get(self, request: Request) -> Response:
            m = pipeline.metrics.snapshot()
            rows = "".join(
                f"<tr><td><a href='/users/{html.escape(u)}/'>{html.escape(u)}</a></td><td>{r.strategy}</td>"
                f"<td>{html.escape(', '.join(i['title'] or i['item_id'] for i in r.items[:5]))}</td></tr>"
                for u, r in reversed(list(pipeline.last_recommendations.items())[-50:])
            )
            stats = "".join(f"<tr><th>{k}</th><td>{'' if v is None else round(v, 2) if isinstance(v, float) else v}</td></tr>"
                            for k, v in m.items())
            body = (f"<html><head><meta charset='utf-8'><title>stream_app</title></head><body>"
                    f"<h1>stream_app</h1><h2>Metrics</h2><table>{stats}</table>"
                    f"<h2>Latest recommendations</h2><table><tr><th>user</th><th>strategy</th><th>top 5</th></tr>"
                    f"{rows}</table></body></html>")
            return self.html(body)
