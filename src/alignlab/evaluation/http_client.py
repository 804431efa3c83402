"""One HTTP request to the LLM judge's API, bounded so that a hostile server can neither take the
key elsewhere nor hang the run or exhaust its memory (issue 28).

urllib trusts the server too much for a request that carries an API key: it follows a redirect to
any host with the `Authorization` header, its timeout bounds each socket read rather than the
request (a byte every half second never times out), and it reads a body of any size into memory.
`post_json` sends the request with http.client instead:

- credentials go only to the origin (scheme, host, port) of the URL given. A redirect within that
  origin is followed (at most `MAX_REDIRECTS`); one to another origin is refused, or, when the caller
  allows it, followed without the credentials. A redirect from https to http leaves the origin, so
  it never carries them.
- `timeout_s` bounds the whole request: sending, and every read of the status line, headers and
  body, redirects included. Connecting is bounded as by urllib (each address tried, and the TLS
  handshake, within the time left when connecting starts; resolving the host name not at all),
  and a connection made past the deadline goes no further.
- a body over `MAX_BODY_BYTES` is refused: before reading when its Content-Length says so, else as
  soon as that many bytes arrived.

Proxies (`http_proxy`, ...) are not used: the request goes straight to the host of the URL.
"""

from __future__ import annotations

import functools
import http.client
import io
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from alignlab.untrusted import shown

# A chat completion holding a verdict and its explanation is a few KiB, so 4 MiB leaves a thousandfold
# margin, while each worker holds at most this much of an endless or hostile body.
MAX_BODY_BYTES = 4 * 2**20
MAX_REDIRECTS = 5
READ_CHUNK = 2**16
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECTS = (301, 302, 303, 307, 308)
# As urllib, requests and browsers do: after these a POST is repeated as a GET without its body;
# 307 and 308 repeat the POST.
REDIRECTS_TO_GET = (301, 302, 303)


class HTTPFailure(Exception):
    """A request that got no usable response. The message names no header, so never the credentials."""


class Unreachable(HTTPFailure):
    """Connecting failed: a wrong host or port, a server that is down, a TLS certificate not trusted."""


class RedirectRefused(HTTPFailure):
    """A redirect that is not followed: a loop, or a target that is not an http(s) URL."""


class CrossOriginRedirect(RedirectRefused):
    """A redirect to another origin, which the caller did not allow."""


class BodyTooLarge(HTTPFailure):
    """A body over MAX_BODY_BYTES."""


@dataclass
class Response:
    status: int
    reason: str
    body: bytes


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, the port filled in; ValueError for another URL."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an http:// or https:// URL")
    return parts.scheme, parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]  # .port: ValueError if bad


def post_json(url: str, body: bytes, credentials: dict[str, str], *, timeout_s: float,
              follow_cross_origin_redirects: bool = False) -> Response:
    """POST the JSON `body` to `url` and read the reply, all within `timeout_s`.

    `credentials` are headers (e.g. Authorization) sent only to `url`'s origin. Raises TimeoutError,
    an HTTPFailure, or what http.client raises when the connection breaks (HTTPException, OSError);
    any status that is not a followed redirect comes back as a Response."""
    deadline = time.monotonic() + timeout_s
    trusted = origin(url)
    method, headers = "POST", {"Content-Type": "application/json"}
    for _ in range(MAX_REDIRECTS + 1):
        sent_headers = {**headers, **credentials} if origin(url) == trusted else headers
        response, location = _exchange(method, url, body, sent_headers, deadline)
        if location is None:
            return response
        target = urljoin(url, location)
        try:
            target_origin = origin(target)
        except ValueError as err:
            raise RedirectRefused(f"redirected to {shown(target)}: {err}") from None
        if target_origin != trusted and not follow_cross_origin_redirects:
            raise CrossOriginRedirect(f"redirected to another origin, {shown(target)}: not followed")
        if response.status in REDIRECTS_TO_GET:
            method, body, headers = "GET", None, {}
        url = target
    raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects")


def _exchange(method: str, url: str, body: bytes | None, headers: dict[str, str],
              deadline: float) -> tuple[Response, str | None]:
    """One request on a new connection, closed after it: the response and the Location it
    redirects to (None when it does not)."""
    scheme, host, port = origin(url)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_class(host, port, timeout=_time_left(deadline))
    connection.response_class = functools.partial(_DeadlineResponse, deadline=deadline)
    try:
        try:
            connection.connect()
        except OSError as err:  # refused, no route, DNS failure, TLS failure, connect timeout
            raise Unreachable(f"{url}: {err}") from None
        connection.sock.settimeout(_time_left(deadline))  # sendall: the timeout bounds the whole send
        connection.request(method, path, body, {**headers, "Connection": "close"})
        with connection.getresponse() as response:
            location = response.getheader("Location") if response.status in REDIRECTS else None
            if location is not None:
                return Response(response.status, response.reason, b""), location
            return Response(response.status, response.reason, _read_body(response)), None
    finally:
        connection.close()


def _read_body(response: http.client.HTTPResponse) -> bytes:
    """The whole body, or BodyTooLarge once it passes MAX_BODY_BYTES: never more than that is read."""
    limit = f"the {MAX_BODY_BYTES // 2**20} MiB limit"
    if response.length is not None and response.length > MAX_BODY_BYTES:
        raise BodyTooLarge(f"reply of {response.length} bytes refused: over {limit}")
    body = bytearray()
    while chunk := response.read(min(READ_CHUNK, MAX_BODY_BYTES + 1 - len(body))):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"reply over {limit}, not read further")
    return bytes(body)


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's deadline passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """A socket as a file to read, each read waiting at most until `deadline`: a server that drips a
    byte at a time runs into the deadline instead of restarting a per-read timeout."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline = sock, deadline
        # The socket's own file, which it counts: the socket stays open for it after the
        # connection is closed, as http.client expects of a response still being read.
        self.file = sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self.sock.settimeout(_time_left(self.deadline))
        return self.file.readinto(buffer)

    def close(self) -> None:
        self.file.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """http.client's response, reading the status line, headers and body through a `_DeadlineReader`."""

    def __init__(self, sock: socket.socket, *args, deadline: float, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # the plain socket file http.client opened, before anything was read from it
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))
