"""GET /status (no key): each provider's circuit state, error rate and latency, as JSON, or as a
small HTML page when the client prefers text/html. Each provider lists its deployments of models
with several (and any deployment resting now): weight, priority, circuit, in flight, rest left."""

from __future__ import annotations

import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from gateway.api.common import app_state, json_response
from gateway.routing.health import CircuitView


def _provider_state(circuits: list[CircuitView]) -> str:
    states = {c.state for c in circuits}
    if not circuits or states == {"closed"}:
        return "healthy"
    if states == {"open"}:
        return "down"
    return "degraded"


async def status(request: Request) -> Response:
    state = app_state(request)
    circuits = {c.model: c for c in state.health.view()}
    rests = {r.key: r for r in state.retrier.capacity.rests()}
    balancer = state.retrier.balancer
    providers: list[dict[str, Any]] = []
    for name, settings in sorted(state.settings.providers.items()):
        entries = [d for d in state.catalog.deployments.values() if d.model.provider == name]
        seen = [circuits[e.key] for e in entries if e.key in circuits]
        calls = sum(c.calls for c in seen)
        errors = sum(c.error_rate * c.calls for c in seen)
        latencies = [c.latency_ms for c in seen if c.latency_ms is not None]
        providers.append(
            {
                "name": name,
                "kind": settings.kind,
                "available": any(e.available for e in entries) if entries else False,
                "state": _provider_state(seen),
                "recent_calls": calls,
                "error_rate": round(errors / calls, 4) if calls else 0.0,
                "latency_ms": round(sum(latencies) / len(latencies), 1) if latencies else None,
                "models": [
                    {
                        "id": c.model,
                        "state": c.state,
                        "recent_calls": c.calls,
                        "error_rate": round(c.error_rate, 4),
                        "latency_ms": None if c.latency_ms is None else round(c.latency_ms, 1),
                    }
                    for c in seen
                ],
                # every deployment (a model served by this provider), as the balancer sees it
                "deployments": [
                    {
                        "key": d.key,
                        "model": d.model.id,
                        "upstream_model": d.model.upstream_model or d.model.id.split("/", 1)[1],
                        "weight": d.weight,
                        "priority": d.priority,
                        "state": circuits[d.key].state if d.key in circuits else "closed",
                        "in_flight": balancer.in_flight(d.key),
                        "resting_s": round(rests[d.key].resting_s, 3) if d.key in rests else 0.0,
                    }
                    for d in entries
                    if len(state.catalog.entries[d.model.id].deployments) > 1 or d.key in rests
                ],
            }
        )
    body: dict[str, object] = {
        "status": "ok",
        "providers": providers,
    }
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(_page(body))
    return json_response(body)


def _page(body: dict[str, object]) -> str:
    rows = []
    providers = body["providers"]
    assert isinstance(providers, list)  # noqa: S101 (built just above)
    for p in providers:
        latency = "-" if p["latency_ms"] is None else f"{p['latency_ms']} ms"
        rows.append(
            "<tr>"
            f"<td>{html.escape(p['name'])}</td><td>{html.escape(p['kind'])}</td>"
            f"<td class='{p['state']}'>{p['state']}</td>"
            f"<td>{'yes' if p['available'] else 'no'}</td>"
            f"<td>{p['recent_calls']}</td><td>{p['error_rate'] * 100:.1f}%</td><td>{latency}</td>"
            "</tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Klawd Gateway status</title>"
        "<meta http-equiv='refresh' content='10'><style>"
        "body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
        "td,th{padding:.4rem .8rem;border-bottom:1px solid #ddd;text-align:left}"
        ".healthy{color:#1a7f37}.degraded{color:#9a6700}.down{color:#cf222e}"
        "</style></head><body><h1>Klawd Gateway</h1>"
        f"<p>Status: {html.escape(str(body['status']))}</p><table><tr><th>provider</th>"
        "<th>kind</th><th>state</th><th>available</th><th>recent calls</th><th>errors</th>"
        "<th>latency</th></tr>" + "".join(rows) + "</table></body></html>"
    )
