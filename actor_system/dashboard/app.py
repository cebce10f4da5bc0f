"""The dashboard's ASGI app: server-rendered pages over one ActorSystem, every action a plain
form POST (with a CSRF token), a token when it is reachable from beyond the machine.

Pages read through the system's ports with bounded reads only (no KEYS, no SCAN of the
keyspace): counters and sorted-set counts per partition, the heads of sorted sets and lists.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from actor_system import stored_state
from actor_system.actor import ActorRef
from actor_system.envelope import decode
from actor_system.errors import ActorSystemError, DecodeError
from actor_system.history import percentile

if TYPE_CHECKING:
    from starlette.requests import Request

    from actor_system.ports import DeadLetter
    from actor_system.system import ActorSystem

HERE = Path(__file__).parent
log = logging.getLogger("actor_system")
COOKIE = "actor_system_dashboard"
DLQ_SCAN = 10_000  # dead letters a filter looks through, newest first
PAGE = 50
TOP = 2  # mailboxes looked at per partition for the deepest: those next to run
CHARTS_S = 10.0
RANGES = {"hour": (3600_000, 12), "day": (86400_000, 24), "week": (7 * 86400_000, 28)}


def app(system: ActorSystem, *, token: str | None = None, read_only: bool = False) -> Starlette:
    """The dashboard of ``system`` as an ASGI app, to serve (``actor-system dashboard``) or
    mount in a server of one's own. ``token``: requests must carry it (``Authorization:
    Bearer``, or ``?token=`` once, which sets a session cookie); ``read_only``: every action
    answers 403."""
    return Dashboard(system, token, read_only).asgi()


class Dashboard:
    def __init__(self, system: ActorSystem, token: str | None, read_only: bool) -> None:
        self.system = system
        self.token = token
        self.read_only = read_only
        # The charts count whole minutes: one read of the history serves every refresh of
        # CHARTS_S seconds (the counts above them are read each time).
        self._charts_cache: tuple[float, list[dict[str, Any]], str] | None = None
        # Signs the session cookie and the forms' CSRF tokens: the token when there is one,
        # else a secret kept in Redis, so that every dashboard of the system (Lambda
        # containers, processes behind a balancer) accepts the others' forms.
        self.secret = token.encode() if token else _shared_secret(system)
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
        )
        self.templates.filters["iso"] = _iso
        self.templates.filters["ago"] = _ago
        self.templates.filters["pretty"] = _pretty

    def asgi(self) -> Starlette:
        routes = [
            Route("/", self.overview),
            Route("/api/overview", self.overview_json),
            Route("/deferred", self.deferred),
            Route("/deferred/cancel", self.cancel, methods=["POST"]),
            Route("/actor", self.actor),
            Route("/dead-letters", self.dead_letters),
            Route("/dead-letters/show", self.dead_letter),
            Route("/dead-letters/act", self.act_on_dead_letters, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return Starlette(routes=routes, middleware=[Middleware(_Guard, dashboard=self)])

    # -- security -----------------------------------------------------------------------

    def session_value(self) -> str:
        return hmac.new(self.secret, b"session", hashlib.sha256).hexdigest()

    def csrf_token(self) -> str:
        return hmac.new(self.secret, b"csrf", hashlib.sha256).hexdigest()

    async def form(self, request: Request) -> Any:
        """The posted form, or None when it lacks this dashboard's CSRF token."""
        form = await request.form()
        if not hmac.compare_digest(str(form.get("csrf", "")), self.csrf_token()):
            return None
        return form

    def render(self, request: Request, name: str, status: int = 200, **data: Any) -> HTMLResponse:
        page = self.templates.get_template(name).render(
            request=request,
            root=_root(request),
            csrf=self.csrf_token(),
            read_only=self.read_only,
            where=getattr(self.system.backend, "where", ""),
            now=datetime.now(UTC),
            **data,
        )
        return HTMLResponse(page, status_code=status)

    # -- pages ----------------------------------------------------------------------------

    def _overview_data(self) -> dict[str, Any]:
        summary = self.system.backend.summary(TOP)
        summary["top"] = summary["top"][:10]
        charts, _ = self._cached_charts()
        return {
            "types": [a.name for a in self.system.registry],
            "summary": summary,
            "charts": charts,
        }

    def _cached_charts(self) -> tuple[list[dict[str, Any]], str]:
        """The charts and their HTML, read and rendered at most every CHARTS_S seconds."""
        now = time.monotonic()
        cached = self._charts_cache
        if cached is None or now - cached[0] >= CHARTS_S:
            charts = self._charts()
            html = self.templates.get_template("charts.html").render(charts=charts)
            cached = self._charts_cache = (now, charts, html)
        return cached[1], cached[2]

    def _charts(self) -> list[dict[str, Any]]:
        """The last hour, minute by minute: turns and messages, deferred lateness p50/p99,
        dead letters."""
        now_minute = int(self.system.clock.now() // 60) * 60_000
        first = now_minute - 59 * 60_000
        rows = self.system.backend.history(first, 60)
        labels = [_iso(first + i * 60_000)[11:16] for i in range(60)]
        late = [{int(k[1:]): v for k, v in r.items() if k.startswith("b")} for r in rows]
        return [
            _chart("throughput", "Messages per minute", labels, [r.get("m", 0) for r in rows], ""),
            _chart("turns", "Turns per minute", labels, [r.get("t", 0) for r in rows], ""),
            _chart(
                "lateness-p50",
                "Deferred lateness p50 (ms, at most)",
                labels,
                [percentile(h, 0.5) for h in late],
                "ms",
            ),
            _chart(
                "lateness-p99",
                "Deferred lateness p99 (ms, at most)",
                labels,
                [percentile(h, 0.99) for h in late],
                "ms",
            ),
            _chart("dead", "Dead letters per minute", labels, [r.get("d", 0) for r in rows], ""),
        ]

    async def overview(self, request: Request) -> Response:
        return self.render(request, "overview.html", **self._overview_data())

    async def overview_json(self, request: Request) -> Response:
        data = self._overview_data()
        del data["charts"]
        return JSONResponse({**data, "charts_html": self._cached_charts()[1]})

    async def deferred(self, request: Request) -> Response:
        q = request.query_params
        span = q.get("range", "hour")
        if span not in RANGES:
            span = "hour"
        actor_type = q.get("actor_type", "").strip()
        message_type = q.get("message_type", "").strip()
        span_ms, buckets = RANGES[span]
        now_ms = int(self.system.clock.now() * 1000)
        counts, sampled = self.system.backend.timeline(
            now_ms, span_ms, buckets, actor_type or None, message_type or None
        )
        after = _int(q.get("after"), 0)
        rows = self.system.backend.deferred_page(
            after, PAGE + 1, actor_type or None, message_type or None, q.get("after_id", "")
        )
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        step = span_ms // buckets
        bars = [
            {"start": now_ms + i * step, "count": c, "label": _label(now_ms + i * step, span)}
            for i, c in enumerate(counts)
        ]
        filters = {"range": span, "actor_type": actor_type, "message_type": message_type}
        next_url = None
        if more and rows:
            next_url = (
                _root(request)
                + "/deferred?"
                + urlencode({**filters, "after": rows[-1][2], "after_id": rows[-1][0]})
            )
        return self.render(
            request,
            "deferred.html",
            bars=bars,
            peak=max(counts, default=0) or 1,
            sampled=sampled,
            rows=rows,
            filters=filters,
            ranges=list(RANGES),
            next_url=next_url,
            pending=self.system.backend.summary(0)["deferred"],
        )

    async def cancel(self, request: Request) -> Response:
        form = await self.form(request)
        if form is None:
            return _forbidden()
        mid = str(form.get("id", ""))
        try:
            done = self.system.cancel(mid)
        except ActorSystemError as e:
            return self.render(request, "error.html", 400, message=str(e))
        back = str(form.get("back") or "/deferred")
        return _back(_root(request), back, "cancelled" if done else "not-pending")

    async def actor(self, request: Request) -> Response:
        q = request.query_params
        type_name, actor_id = q.get("type", "").strip(), q.get("id", "").strip()
        if not type_name and not actor_id:
            return self.render(request, "actor.html", found=None, types=self._types())
        try:
            ref = ActorRef(type_name, actor_id)
        except ActorSystemError as e:
            return self.render(request, "actor.html", found=None, error=str(e), types=self._types())
        view = self.system.backend.actor_view(ref.key, 10)
        state_json: str | None = None
        invalid: str | None = None
        try:
            actor_type = self.system.registry.get(ref.type)
            loaded = stored_state.decode(actor_type, view["state"])
            state_json = _pretty(loaded.state.model_dump(mode="json"))
        except ActorSystemError as e:  # unknown type, or a state that no longer validates
            invalid = str(e)
        raw = None
        try:
            raw = stored_state.raw(view["state"])
        except DecodeError as e:
            invalid = invalid or str(e)
        dead = [d for d in self._dead(DLQ_SCAN) if d.actor == ref.key][:20]
        return self.render(
            request,
            "actor.html",
            found=ref,
            types=self._types(),
            view=view,
            mailbox=[_entry(e) for e in view["mailbox"]],
            inflight=[_entry(e) for e in view["inflight"]],
            state_json=state_json,
            raw_json=None if raw is None else _pretty(_jsonable(raw)),
            invalid=invalid,
            deferred=self.system.deferred(50, ref),
            reminders=self.system.reminders(ref),
            dead=dead,
        )

    async def dead_letters(self, request: Request) -> Response:
        q = request.query_params
        filters = {k: q.get(k, "").strip() for k in ("reason", "actor", "type")}
        matching = self._matching(filters)
        return self.render(
            request,
            "dead_letters.html",
            rows=[(d, _message_type(d)) for d in matching[: PAGE * 4]],
            total=self.system.backend.dead_letter_count(),
            matching=len(matching),
            filters=filters,
            query=urlencode(filters),
            done=q.get("done"),
        )

    async def dead_letter(self, request: Request) -> Response:
        mid = request.query_params.get("id", "")
        found = next((d for d in self._dead(DLQ_SCAN) if d.id == mid), None)
        if found is None:
            return self.render(request, "error.html", 404, message=f"no dead letter {mid!r}")
        envelope: str | None = None
        found_error: str | None = None
        try:
            envelope = _pretty(_jsonable(_envelope(decode(found.entry))))
        except DecodeError as e:
            found_error = str(e)
        return self.render(
            request,
            "dead_letter.html",
            d=found,
            envelope=envelope,
            decode_error=found_error,
            raw_hex=found.entry.hex(),
        )

    async def act_on_dead_letters(self, request: Request) -> Response:
        form = await self.form(request)
        if form is None:
            return _forbidden()
        action = str(form.get("action", ""))
        if action not in ("redrive", "purge"):
            return self.render(request, "error.html", 400, message=f"unknown action {action!r}")
        filters = {k: str(form.get(k, "")).strip() for k in ("reason", "actor", "type")}
        if form.get("scope") == "matching":
            chosen = self._matching(filters)
        else:
            ids = {str(v) for v in form.getlist("id")}
            chosen = [d for d in self._dead(DLQ_SCAN) if d.id in ids]
        if not chosen:
            return self.render(request, "error.html", 400, message="no dead letter selected")
        if form.get("confirm") != "yes":
            return self.render(
                request,
                "confirm.html",
                action=action,
                chosen=chosen,
                form=[(k, str(v)) for k, v in form.multi_items() if k != "csrf"],
            )
        act = self.system.redrive if action == "redrive" else self.system.purge
        n = sum(1 for d in chosen if act(d))
        back = _root(request) + "/dead-letters?" + urlencode({**filters, "done": f"{action}:{n}"})
        return RedirectResponse(back, status_code=303)

    # -- reading helpers ------------------------------------------------------------------

    def _types(self) -> list[str]:
        return [a.name for a in self.system.registry]

    def _dead(self, limit: int) -> list[DeadLetter]:
        return self.system.dead_letters(limit)

    def _matching(self, filters: dict[str, str]) -> list[DeadLetter]:
        out = []
        for d in self._dead(DLQ_SCAN):
            if filters["reason"] and filters["reason"].lower() not in d.reason.lower():
                continue
            if filters["actor"] and not d.actor.startswith(filters["actor"]):
                continue
            if filters["type"] and _message_type(d) != filters["type"]:
                continue
            out.append(d)
        return out


class _Guard(BaseHTTPMiddleware):
    """The token (when one is set), read-only, and CSRF for every POST."""

    def __init__(self, app: Any, dashboard: Dashboard) -> None:
        super().__init__(app)
        self.d = dashboard

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        d = self.d
        if request.url.path.startswith(_root(request) + "/static/"):
            static: Response = await call_next(request)
            return static
        if d.token is not None:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given, d.token):
                # Once: the cookie carries the session from here, the URL drops the token.
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                url = request.url.path + ("?" + urlencode(rest) if rest else "")
                redirect = RedirectResponse(url, status_code=303)
                redirect.set_cookie(
                    COOKIE,
                    d.session_value(),
                    httponly=True,
                    samesite="strict",
                    path=_root(request) + "/",
                    secure=request.url.scheme == "https",
                )
                return redirect
            bearer = request.headers.get("authorization", "")
            cookie = request.cookies.get(COOKIE, "")
            if not (
                (bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:], d.token))
                or hmac.compare_digest(cookie, d.session_value())
            ):
                return HTMLResponse(
                    "<!doctype html><title>401</title><p>This dashboard needs its token: "
                    "open it with <code>?token=...</code> or send "
                    "<code>Authorization: Bearer ...</code>.</p>",
                    status_code=401,
                )
        if request.method == "POST":
            if d.read_only:
                return HTMLResponse("read-only dashboard: actions are off", status_code=403)
            origin = request.headers.get("origin") or request.headers.get("referer")
            # The host the browser sees: a proxy in front (a signing proxy before API
            # Gateway) passes it on as X-Forwarded-Host.
            hosts = {request.url.netloc, request.headers.get("x-forwarded-host", "")}
            if origin and urlsplit(origin).netloc not in hosts:
                return HTMLResponse("cross-origin form refused", status_code=403)
            # The form's CSRF token is checked by each action (Dashboard.form).
        response: Response = await call_next(request)
        response.headers.setdefault("x-frame-options", "DENY")
        response.headers.setdefault("x-content-type-options", "nosniff")
        response.headers.setdefault(
            "content-security-policy",
            "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:",
        )
        return response


# -- formatting ---------------------------------------------------------------------------


def _chart(key: str, title: str, labels: list[str], values: list[Any], unit: str) -> dict[str, Any]:
    """A bar chart of one series (None: no data that minute), scaled to its peak."""
    peak = max((v for v in values if v is not None), default=0) or 1
    bars = [
        {"label": lab, "value": v, "h": 0 if v is None else round(60 * v / peak, 1)}
        for lab, v in zip(labels, values, strict=True)
    ]
    last = next((v for v in reversed(values) if v is not None), None)
    return {"key": key, "title": title, "bars": bars, "peak": peak, "unit": unit, "last": last}


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _ago(ms: int) -> str:
    s = max(0.0, time.time() - ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit}"
    return f"{s:.0f} s"


def _label(ms: int, span: str) -> str:
    d = datetime.fromtimestamp(ms / 1000, UTC)
    return d.strftime("%H:%M" if span != "week" else "%a %H:%M")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _int(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _envelope(env: Any) -> dict[str, Any]:
    return {
        "id": env.id,
        "target": env.target,
        "type": env.type,
        "payload": env.payload,
        "attempt": env.attempt,
        "sent_at": _iso(env.sent_at_ms),
        "due_at": _iso(env.due_at_ms),
        "reminder": None if env.reminder is None else list(env.reminder),
    }


def _entry(raw: bytes) -> dict[str, Any]:
    try:
        env = decode(raw)
    except DecodeError as e:
        return {"id": raw[:32].decode("ascii", "replace"), "type": "?", "payload": str(e)}
    return {"id": env.id, "type": env.type, "payload": _pretty(env.payload)}


def _message_type(d: DeadLetter) -> str:
    try:
        return decode(d.entry).type
    except DecodeError:
        return "?"


def _back(root: str, url: str, done: str) -> Response:
    """Back to ``url``, a path of this dashboard's (under ``root``), never elsewhere."""
    if not url.startswith("/") or url.startswith("//") or "\\" in url:
        url = "/deferred"  # never off the dashboard (a browser reads a backslash as a slash)
    sep = "&" if "?" in url else "?"
    return RedirectResponse(f"{root}{url}{sep}done={done}", status_code=303)


def _shared_secret(system: ActorSystem) -> bytes:
    """The system's dashboard secret from Redis; this process's own if it cannot be read
    (then a form is accepted only by the dashboard that rendered it)."""
    shared = getattr(system.backend, "dashboard_secret", None)
    if shared is not None:
        try:
            return bytes(shared())
        except ActorSystemError as e:
            log.warning("dashboard secret not read from Redis, using one of this process: %s", e)
    return secrets.token_hex(32).encode()


def _root(request: Request) -> str:
    """Where the dashboard is mounted ("" at the server's root): every link starts with it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _forbidden() -> Response:
    return HTMLResponse("missing or wrong CSRF token", status_code=403)
