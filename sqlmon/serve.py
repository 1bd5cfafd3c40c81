"""`sqlmon serve`: a read-only HTTP view of a database for people (/), scripts (/api/v1/...),
probes (/livez, /healthz) and Prometheus (/metrics).

A process of its own: the scheduler stays minimal, and nothing here can write. Safe by
default: it binds loopback, answers GET and HEAD only, and refuses a Host header it does not
know (a page elsewhere could otherwise reach it through DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder

from . import db as dbmod
from . import live, queries
from .metrics import SqlmonCollector, registry
from .source import Source

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9753
EVENTS_LIMIT = 100  # default page of /api/v1/events
EVENTS_MAX = 1000
HISTORY_POINTS = 120  # default points of /api/v1/history
HISTORY_MAX = 2000
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
HEADERS = {
    # No inline script, no other origin: the page's own two files only.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(bound: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host header values accepted: the bound address, loopback names and `extra`, each
    with and without the port."""
    names = {bound, "localhost", "127.0.0.1", "[::1]", *extra}
    if ":" in bound and not bound.startswith("["):
        names.add(f"[{bound}]")
    out = set()
    for n in names:
        n = n.lower()
        out.add(n)
        if not n.rsplit(":", 1)[-1].isdigit() or n.endswith("]"):
            out.add(f"{n}:{port}")
    return frozenset(out)


class Handler(BaseHTTPRequestHandler):
    server: SqlmonServer
    protocol_version = "HTTP/1.1"
    server_version = "sqlmon"
    # Headers and body go out in two writes: with Nagle's algorithm, a kept-alive client's
    # delayed ACK would hold the body back 40 ms.
    disable_nagle_algorithm = True
    sys_version = ""

    def __getattr__(self, name: str) -> Any:
        # Every method but GET and HEAD: 405, so that there is nothing to forge.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"GET and HEAD only\n",
            "text/plain",
            {"Allow": "GET, HEAD"},
        )

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        host = (self.headers.get("Host") or "").lower()
        if host not in self.server.hosts:
            self._send(HTTPStatus.FORBIDDEN, b"unknown Host header\n", "text/plain")
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            self._route(url.path, query)
        except BadRequest as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - the database unreadable, or worse: a 503
            log.warning("%s: %s: %s", url.path, type(exc).__name__, exc)
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"{type(exc).__name__}: {exc}"})

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        src = self.server.source
        if path in STATIC:
            name, ctype = STATIC[path]
            self._send(HTTPStatus.OK, self.server.static(name), ctype)
        elif path == "/metrics":
            encoder, ctype = choose_encoder(self.headers.get("Accept") or "")
            self._send(HTTPStatus.OK, encoder(self.server.registry), ctype)
        elif path == "/livez":
            self._json(HTTPStatus.OK, {"ok": True})
        elif path == "/healthz":
            st = src.read(queries.status)
            ok, why = queries.health(st)
            alive = st.verdict.alive
            self._json(
                HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE,
                {"ok": alive, "reason": st.verdict.reason if not alive else why},
            )
        elif path == "/api/v1/status":
            self._json(HTTPStatus.OK, live.status_document(src.live()))
        elif path == "/api/v1/events":
            after = _int(query, "after", None, 0)
            limit = _int(query, "limit", EVENTS_LIMIT, 1, EVENTS_MAX) or EVENTS_LIMIT
            rows = src.read(lambda c: live.events_after(c, after, limit))
            last = rows[-1]["id"] if rows else after
            self._json(HTTPStatus.OK, {"events": rows, "last_id": last})
        elif path == "/api/v1/runs":
            runs = src.read(lambda c: queries.list_runs(c))
            self._json(HTTPStatus.OK, {"runs": [_run(r) for r in runs]})
        elif path == "/api/v1/history":
            self._history(query)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such page"})

    def _history(self, query: dict[str, list[str]]) -> None:
        run = _int(query, "run", None, 1)
        points = _int(query, "points", HISTORY_POINTS, 1, HISTORY_MAX) or HISTORY_POINTS
        window = _float(query, "window")

        def read(conn: Any) -> dict[str, object]:
            try:
                chosen = queries.find_run(conn, None, run)
            except queries.UnknownRun as exc:
                return {"run_id": run, "points": [], "error": str(exc)}
            since = chosen.end - window if window is not None else None
            rows = live.history_points(conn, chosen.run_id, points, since)
            return {"run_id": chosen.run_id, "points": rows}

        self._json(HTTPStatus.OK, self.server.source.read(read))

    def _json(self, status: HTTPStatus, doc: object, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(doc, allow_nan=False).encode() + b"\n"
        self._send(status, body, "application/json", extra)

    def _send(
        self, status: HTTPStatus, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


class BadRequest(ValueError):
    pass


def _int(
    q: dict[str, list[str]], name: str, default: int | None, lo: int, hi: int | None = None
) -> int | None:
    if name not in q:
        return default
    try:
        value = int(q[name][-1])
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < lo or (hi is not None and value > hi):
        raise BadRequest(f"{name} must be between {lo} and {hi}" if hi else f"{name} >= {lo}")
    return value


def _float(q: dict[str, list[str]], name: str) -> float | None:
    if name not in q:
        return None
    try:
        value = float(q[name][-1])
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise BadRequest(f"{name} must be above 0")
    return value


def _run(r: queries.RunLine) -> dict[str, object]:
    return {
        "run_id": r.run_id,
        "state": r.state,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "end_reason": r.end_reason,
        "last_snapshot": r.last_snapshot,
        "snapshots": r.snapshots,
        "length_s": round(r.length, 3),
        "pid": r.pid,
        "host": r.host,
    }


class SqlmonServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        db: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        allowed: Iterable[str] = (),
        per_worker: bool = False,
    ) -> None:
        if ":" in host.strip("[]"):
            self.address_family = __import__("socket").AF_INET6
        super().__init__((host.strip("[]"), port), Handler)
        self.source = Source(db)
        self.registry = registry(
            SqlmonCollector(self.source.live, backend=self.source.backend, per_worker=per_worker)
        )
        self.port = self.server_address[1]
        self.hosts = allowed_hosts(host, self.port, allowed)
        self._static: dict[str, bytes] = {}
        if not is_loopback(host.strip("[]")):
            log.warning(
                "serving on %s:%d, beyond this machine: anyone who can reach it can read the "
                "pipeline's state (no authentication); Host headers accepted: %s",
                host,
                self.port,
                ", ".join(sorted(self.hosts)),
            )

    def static(self, name: str) -> bytes:
        if name not in self._static:
            self._static[name] = resources.files("sqlmon").joinpath("web", name).read_bytes()
        return self._static[name]

    def server_close(self) -> None:
        super().server_close()
        self.source.close()


def serve(
    db: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allowed: Iterable[str] = (),
    per_worker: bool = False,
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    with dbmod.as_found(db):  # a read-only look leaves no -wal / -shm of its own behind
        _serve(SqlmonServer(db, host, port, allowed=allowed, per_worker=per_worker))


def _serve(server: SqlmonServer) -> None:
    import signal

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    log.info("serving on http://%s:%d/", host, port)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
