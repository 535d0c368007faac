"""libnetwork's remote plugin protocol: HTTP POSTs of JSON bodies to
``/<Interface>.<Method>`` over a unix socket (libnetwork docs/remote.md,
docs/ipam.md; Docker's pkg/plugins client).

Answers are JSON with ``Content-Type: application/vnd.docker.plugins.v1+json``,
also every error: a status of 4xx or 5xx and ``{"Err": "..."}``, which is
what Docker's plugin client reads from a failed call (and prints as
``<Interface>.<Method>: <Err>``). A path the plugin does not serve is
``404`` with ``{"Err": ...}``: libnetwork treats a 404 from an optional
method as "not implemented" rather than a failure. Malformed requests
(bad JSON, a body that is not an object, fields of the wrong type) are
``400``; a call that is understood but cannot be done is ``500``.

The server is the standard library's: one thread per connection
(``ThreadingMixIn``) on a ``UnixStreamServer``, keep-alive HTTP/1.1.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket
import socketserver
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger("vnetdp.docker")

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
MAX_BODY = 1 << 20
IDLE_S = 300.0  # an idle keep-alive connection is closed after this
#: Docker's network and endpoint IDs are 64 hex digits; anything else must at
#: least be safe as a file name part.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class PluginError(Exception):
    """A call that cannot be done: ``{"Err": msg}`` with ``status``."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, msg: str, status: int | None = None) -> None:
        super().__init__(msg)
        if status is not None:
            self.status = status


class BadRequest(PluginError):
    """The request itself is wrong (JSON, types, unknown IDs' syntax)."""

    status = HTTPStatus.BAD_REQUEST


Handler = Callable[["Body"], dict]


class Body:
    """A request's JSON object, read with its types checked. Go sends
    ``null`` for an empty map or slice: read as empty."""

    def __init__(self, method: str, data: dict[str, Any]) -> None:
        self.method, self.data = method, data

    @classmethod
    def parse(cls, method: str, raw: bytes) -> Body:
        if not raw.strip():
            return cls(method, {})
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"{method}: the request is not JSON: {e}")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise BadRequest(f"{method}: the request must be a JSON object, not {type(data).__name__}")
        return cls(method, data)

    def _get(self, name: str, kinds: tuple[type, ...], what: str) -> Any:
        value = self.data.get(name)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
            raise BadRequest(f"{self.method}: {name} must be {what}, not {json.dumps(value)[:60]}")
        return value

    def text(self, name: str, required: bool = False) -> str:
        value = self._get(name, (str,), "a string") or ""
        if required and not value:
            raise BadRequest(f"{self.method}: {name} is missing")
        return value

    def ident(self, name: str) -> str:
        """A required network or endpoint ID."""
        value = self.text(name, required=True)
        if not _ID.fullmatch(value):
            raise BadRequest(f"{self.method}: {name} {value[:80]!r} is not an ID (letters, digits, '_.-')")
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        return self._get(name, (dict,), "an object") or {}

    def strings(self, name: str) -> dict[str, str]:
        """An object of strings (IPAM's Options)."""
        value = self.mapping(name)
        bad = [k for k, v in value.items() if not isinstance(v, str)]
        if bad:
            raise BadRequest(f"{self.method}: {name}.{bad[0]} must be a string")
        return value

    def objects(self, name: str) -> list[dict[str, Any]]:
        """A list of objects (IPv4Data)."""
        value = self._get(name, (list,), "a list") or []
        if not all(isinstance(item, dict) for item in value):
            raise BadRequest(f"{self.method}: {name} must be a list of objects")
        return value

    def flag(self, name: str) -> bool:
        return bool(self._get(name, (bool,), "true or false"))


def read_only(value: dict) -> Handler:
    """A handler that answers ``value`` whatever is asked."""
    return lambda body: value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vnetdp-docker-plugin"
    timeout = IDLE_S
    server: Server

    def address_string(self) -> str:   # a unix socket's peer has no address
        return "docker"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("http: " + fmt, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What http.server says about a request it cannot parse, as JSON."""
        self.close_connection = True
        self._reply(code, {"Err": message or HTTPStatus(code).phrase})

    def _reply(self, status: int, value: dict) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, size = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    n = int(line.split(b";")[0].strip() or b"x", 16)
                except ValueError:
                    raise BadRequest("malformed chunked body")
                if n == 0:
                    while self.rfile.readline(1024).strip():   # trailers
                        pass
                    return b"".join(chunks)
                size += n
                if size > MAX_BODY:
                    raise PluginError(f"request body over {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                chunks.append(self.rfile.read(n))
                self.rfile.readline(8)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest("Content-Length is not a number")
        if length < 0 or length > MAX_BODY:
            raise PluginError(f"request body of {length} bytes (at most {MAX_BODY})",
                              HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return self.rfile.read(length)

    def _call(self) -> None:
        method = self.path.split("?", 1)[0].strip("/")
        handler = self.server.routes.get(method)
        try:
            raw = self._body()
            if self.command != "POST":
                raise PluginError(f"{method}: plugin calls are POSTs, not {self.command}",
                                  HTTPStatus.METHOD_NOT_ALLOWED)
            if handler is None:
                raise PluginError(f"vnetdp does not implement {method or '/'} (it serves "
                                  f"{', '.join(sorted(self.server.routes))})", HTTPStatus.NOT_FOUND)
            result = handler(Body.parse(method, raw))
            log.info("%s: ok", method)
            self._reply(HTTPStatus.OK, result)
        except PluginError as e:
            if e.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                self.close_connection = True
            (log.info if e.status == HTTPStatus.NOT_FOUND else log.warning)("%s: %s", method, e)
            self._reply(e.status, {"Err": str(e)})
        except Exception as e:  # a bug: say so, never hang up without an answer
            log.exception("%s failed", method)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR,
                        {"Err": f"{method}: internal error in vnetdp's plugin: {e} (its log has the traceback)"})

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _call


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The plugin's HTTP server on a unix socket; ``routes``: method -> handler."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, routes: dict[str, Handler]) -> None:
        self.routes = routes
        _clear_stale_socket(path)
        super().__init__(path, _Handler)
        os.chmod(path, 0o660)

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.server_address)


def _clear_stale_socket(path: str) -> None:
    """Make room for the socket: a file left by a killed plugin is removed;
    one that a live plugin answers on is not taken over."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                raise
        else:
            raise PluginError(f"another process serves {path}: stop it first")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
