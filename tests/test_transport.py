"""The delivery transport against real loopback servers: deadline, capped body, pinning.

Each server is a plain socket server written here, so a test controls every byte: one that
drips its answer, one that streams 200 MB, one that listens where a rebound name points.
Host names are made up (``*.test``) and answered by a fake ``socket.getaddrinfo``; numeric
hosts go to the real one, so nothing asks a DNS server.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pubsubpull import transport
from pubsubpull.ssrf import TargetNotAllowed
from pubsubpull.transport import MAX_RESPONSE_BYTES, DeliveryTimeout, Response, put

PUBLIC_V4 = "93.184.216.34"  # public, so the check passes; what answers there does not matter
DATA = b'{"subscription": "s", "changes": []}'
HEADERS = {"Content-Type": "application/json", "User-Agent": "pubsubpull"}


# Servers.


@dataclass(frozen=True)
class Received:
    request_line: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


# (connection, number of the request on the server, from 1) -> keep the connection open
Respond = Callable[[socket.socket, int], bool]


class Server:
    """A loopback HTTP/1.1 server: ``respond`` writes each answer, byte by byte if it likes.

    Without ``respond`` it accepts connections and never reads from them.
    """

    def __init__(
        self,
        respond: Respond | None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.listener = socket.create_server((host, port))
        self.listener.settimeout(0.05)  # to notice close()
        self.port: int = self.listener.getsockname()[1]
        self.respond = respond
        self.tls = tls
        self.connections = 0
        self.accepted: list[socket.socket] = []
        self.received: list[Received] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stopping.set()
        for conn in self.accepted:  # kept alive by the client: end the server's read
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self.threads):
            thread.join(10)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self.accepted.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.accepted.append(conn)  # the original socket is detached now
            if self.respond is None:
                self.stopping.wait()
                return
            with conn.makefile("rb") as reader:
                while not self.stopping.is_set():
                    received = read_request(reader)
                    if received is None:
                        return
                    self.received.append(received)
                    if not self.respond(conn, len(self.received)):
                        return
        except OSError:
            return  # the client went away (or the TLS handshake failed)
        finally:
            conn.close()


def read_request(reader: BinaryIO) -> Received | None:
    """One request from ``reader``, or ``None`` when the client closed the connection."""
    request_line = reader.readline().decode("latin-1").rstrip("\r\n")
    if not request_line:
        return None
    headers = {}
    while (line := reader.readline().decode("latin-1").rstrip("\r\n")) != "":
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return Received(request_line, headers, body)


def answer(status: str = "200 OK", body: bytes = b"ok", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode("latin-1") + body
    )


def ok(conn: socket.socket, number: int) -> bool:
    conn.sendall(answer())
    return True


def drip(data: bytes, every: float, stopping: threading.Event) -> Callable[[socket.socket], None]:
    """Send ``data`` one byte at a time, ``every`` seconds apart."""

    def send(conn: socket.socket) -> None:
        for index in range(len(data)):
            if stopping.wait(every):
                return
            conn.sendall(data[index : index + 1])

    return send


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Start servers with ``servers(respond, ...)``; all are closed after the test."""
    started: list[Server] = []

    def start(respond: Respond | None, **kwargs: Any) -> Server:
        server = Server(respond, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


# A fake DNS for made-up names.


class FakeDNS:
    """``socket.getaddrinfo`` answering ``answers[name](n)`` for the n-th lookup of a name."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.answers: dict[str, Callable[[int], list[str]]] = {}
        self.asked: list[str] = []

    def set(self, name: str, *addresses: str) -> None:
        self.answers[name] = lambda n: list(addresses)

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self.real(host, port, *args, **kwargs)
        self.asked.append(name)
        addresses = self.answers[name](self.asked.count(name))
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (address, int(port), 0, 0) if ":" in address else (address, int(port)),
            )
            for address in addresses
        ]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


def allow(settings: Any, *prefixes: str) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "ALLOWED_TARGETS": list(prefixes)}


# The answer.


def test_put_returns_status_and_body(servers: Callable[..., Server]) -> None:
    server = servers(ok)
    response = put(server.url(), DATA, HEADERS, timeout=5.0)
    assert response == Response(status=200, body=b"ok")
    [received] = server.received
    assert received.request_line == "PUT /hook HTTP/1.1"
    assert received.body == DATA
    assert received.headers["content-type"] == "application/json"
    assert received.headers["host"] == f"127.0.0.1:{server.port}"
    assert received.headers["accept-encoding"] == "identity"  # the body is never decoded


def test_put_returns_the_response_headers(servers: Callable[..., Server]) -> None:
    def respond(conn: socket.socket, number: int) -> bool:
        extra = "Retry-After: 120\r\nX-Trace: a\r\nX-Trace: b\r\n"
        conn.sendall(answer("503 Service Unavailable", b"busy", extra))
        return True

    response = put(servers(respond).url(), DATA, HEADERS, timeout=5.0)
    assert (response.status, response.body) == (503, b"busy")
    assert response.headers["retry-after"] == response.headers["Retry-After"] == "120"
    assert response.headers["X-Trace"] == "a, b"  # a repeated header, joined
    assert response.headers["Content-Length"] == "4"


def test_cookies_a_target_sets_are_never_sent_back(servers: Callable[..., Server]) -> None:
    def respond(conn: socket.socket, number: int) -> bool:
        conn.sendall(answer("200 OK", b"ok", "Set-Cookie: session=abc; Path=/\r\n"))
        return True

    server = servers(respond)
    for _ in range(2):
        assert put(server.url(), DATA, HEADERS, timeout=5.0).status == 200
    assert [r.headers.get("cookie") for r in server.received] == [None, None]


def test_response_is_frozen() -> None:
    response = Response(200, b"")
    with pytest.raises(AttributeError):
        response.status = 500  # type: ignore[misc]


def test_redirect_is_returned_not_followed(servers: Callable[..., Server]) -> None:
    elsewhere = servers(ok)

    def redirect(conn: socket.socket, number: int) -> bool:
        conn.sendall(answer("302 Found", b"", f"Location: {elsewhere.url('/x')}\r\n"))
        return True

    server = servers(redirect)
    assert put(server.url(), DATA, HEADERS, timeout=5.0) == Response(302, b"", elsewhere.url("/x"))
    assert elsewhere.connections == 0


def test_connection_refused_is_a_connection_error(servers: Callable[..., Server]) -> None:
    server = servers(ok)
    url = server.url()
    server.close()  # nothing listens on the port any more
    with pytest.raises(requests.ConnectionError) as info:
        put(url, DATA, HEADERS, timeout=5.0)
    assert not isinstance(info.value, requests.Timeout)


# The deadline.


def test_deadline_ends_a_body_dripping_one_byte_at_a_time(servers: Callable[..., Server]) -> None:
    stopping = threading.Event()

    def slow_body(conn: socket.socket, number: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        drip(b"x" * 100, 0.3, stopping)(conn)  # 30 s
        return False

    server = servers(slow_body)
    started = time.monotonic()
    with pytest.raises(DeliveryTimeout, match=r"^no complete answer within 1\.0 s$"):
        put(server.url(), DATA, HEADERS, timeout=1.0)
    assert 0.9 < time.monotonic() - started < 5
    stopping.set()


def test_deadline_ends_a_status_line_dripping_one_byte_at_a_time(
    servers: Callable[..., Server],
) -> None:
    stopping = threading.Event()

    def slow_status(conn: socket.socket, number: int) -> bool:
        drip(answer(body=b"x" * 100), 0.3, stopping)(conn)
        return False

    server = servers(slow_status)
    started = time.monotonic()
    with pytest.raises(DeliveryTimeout, match="no complete answer within 1.0 s"):
        put(server.url(), DATA, HEADERS, timeout=1.0)
    assert 0.9 < time.monotonic() - started < 5
    stopping.set()


def test_a_short_deadline_fires_while_a_longer_one_waits(servers: Callable[..., Server]) -> None:
    # One watchdog thread serves every send's deadline: a 1 s deadline that comes while
    # it waits for a 30 s one still ends its send on time, and the sends start no thread.
    stopping = threading.Event()

    def slow_status(conn: socket.socket, number: int) -> bool:
        drip(answer(body=b"x" * 100), 0.3, stopping)(conn)
        return False

    server = servers(slow_status)
    failures: list[BaseException] = []

    def long_send() -> None:
        try:
            put(server.url(), DATA, HEADERS, timeout=30.0)
        except BaseException as error:  # noqa: BLE001 - ended by stopping the server
            failures.append(error)

    waiting = threading.Thread(target=long_send, daemon=True)
    waiting.start()
    time.sleep(0.3)  # its 30 s deadline is the one the watchdog waits for
    threads = _threads()
    started = time.monotonic()
    with pytest.raises(DeliveryTimeout, match="no complete answer within 1.0 s"):
        put(server.url(), DATA, HEADERS, timeout=1.0)
    assert 0.9 < time.monotonic() - started < 5
    assert _threads() <= threads  # the send started none
    assert [t.name for t in threading.enumerate()].count("pubsubpull-deadlines") == 1
    stopping.set()
    waiting.join(30)


def _threads() -> set[str]:
    """This process's threads but the test servers' (one per connection)."""
    return {t.name for t in threading.enumerate() if not t.name.endswith("(_serve)")}


def test_deadline_ends_a_send_the_target_does_not_read(servers: Callable[..., Server]) -> None:
    server = servers(None)  # accepts, never reads: the request body fills the buffers
    started = time.monotonic()
    with pytest.raises(DeliveryTimeout):
        put(server.url(), b"x" * (48 << 20), HEADERS, timeout=1.0)
    assert time.monotonic() - started < 5


def test_deadline_covers_a_kept_alive_connection(servers: Callable[..., Server]) -> None:
    stopping = threading.Event()

    def fast_then_slow(conn: socket.socket, number: int) -> bool:
        if number == 1:
            return ok(conn, number)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        drip(b"x" * 100, 0.3, stopping)(conn)
        return False

    server = servers(fast_then_slow)
    assert put(server.url(), DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
    started = time.monotonic()
    with pytest.raises(DeliveryTimeout):
        put(server.url(), DATA, HEADERS, timeout=1.0)
    assert time.monotonic() - started < 5
    assert server.connections == 1  # the second put reused the first one's connection
    stopping.set()


def test_a_connection_the_deadline_shut_down_is_not_reused(servers: Callable[..., Server]) -> None:
    stopping = threading.Event()

    def slow_then_fast(conn: socket.socket, number: int) -> bool:
        if number == 1:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            drip(b"ok", 2.0, stopping)(conn)  # the second byte comes after the deadline
            return True
        return ok(conn, number)

    server = servers(slow_then_fast)
    with pytest.raises(DeliveryTimeout):
        put(server.url(), DATA, HEADERS, timeout=1.0)
    assert put(server.url(), DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
    assert server.connections == 2
    stopping.set()


# The capped body.


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """The process's peak resident memory (VmHWM) since :func:`reset_peak_resident`."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) << 10  # type: ignore[union-attr]


def reset_peak_resident() -> bool:
    """Reset VmHWM to the current resident memory; False where Linux does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def test_a_200_mb_body_is_not_read(servers: Callable[..., Server]) -> None:
    size = 200 << 20
    chunk = b"x" * 65536
    sent = [0]
    finished = threading.Event()

    def huge(conn: socket.socket, number: int) -> bool:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        try:
            while sent[0] < size:
                conn.sendall(chunk)  # generated lazily: one chunk in memory
                sent[0] += len(chunk)
        finally:
            finished.set()
        return False

    server = servers(huge)
    put(servers(ok).url(), DATA, HEADERS, timeout=5.0)  # warm up: imports, session, buffers
    before = resident_bytes()
    peak_known = reset_peak_resident()  # a body read whole and freed shows only in the peak
    response = put(server.url(), DATA, HEADERS, timeout=30.0)
    grown = (peak_resident_bytes() if peak_known else resident_bytes()) - before
    assert response.status == 200
    assert len(response.body) == MAX_RESPONSE_BYTES == 65536
    assert grown < 50 << 20, f"resident memory grew by {grown >> 20} MB"
    # The connection was closed, not drained: the server stopped after the socket buffers.
    assert finished.wait(10)
    assert sent[0] < 50 << 20, f"the server sent {sent[0] >> 20} MB"


def test_a_body_read_to_its_end_keeps_the_connection(servers: Callable[..., Server]) -> None:
    def chunked(conn: socket.socket, number: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        return True

    for respond in (ok, chunked):
        server = servers(respond)
        assert put(server.url(), DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
        assert put(server.url(), DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
        assert (server.connections, len(server.received)) == (1, 2)  # keep-alive


def test_a_connection_with_an_unread_rest_is_not_reused(servers: Callable[..., Server]) -> None:
    def long_then_short(conn: socket.socket, number: int) -> bool:
        conn.sendall(answer(body=b"y" * (MAX_RESPONSE_BYTES + 10) if number == 1 else b"ok"))
        return True

    server = servers(long_then_short)
    first = put(server.url(), DATA, HEADERS, timeout=5.0)
    assert first.body == b"y" * MAX_RESPONSE_BYTES
    assert put(server.url(), DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
    assert server.connections == 2  # the second answer was not read from the first one's rest


def test_a_body_of_exactly_the_cap_is_whole(servers: Callable[..., Server]) -> None:
    def exact(conn: socket.socket, number: int) -> bool:
        conn.sendall(answer(body=b"z" * MAX_RESPONSE_BYTES))
        return True

    server = servers(exact)
    assert put(server.url(), DATA, HEADERS, timeout=5.0).body == b"z" * MAX_RESPONSE_BYTES


# Pinning: the connection goes to the address the check accepted.


def test_a_rebound_name_cannot_reach_loopback(servers: Callable[..., Server], dns: FakeDNS) -> None:
    server = servers(ok)  # what the name points to after the check
    dns.answers["rebind.test"] = lambda n: [PUBLIC_V4] if n == 1 else ["127.0.0.1"]
    # The check accepts the public address; a second lookup (by the HTTP library, as before
    # pinning) would have answered 127.0.0.1 and reached the server.
    with pytest.raises(requests.RequestException):
        put(f"https://rebind.test:{server.port}/hook", DATA, HEADERS, timeout=0.5)
    assert dns.asked == ["rebind.test"]
    assert server.connections == 0


def test_a_name_resolving_to_loopback_at_delivery_is_refused_before_connecting(
    servers: Callable[..., Server], dns: FakeDNS
) -> None:
    server = servers(ok)
    dns.set("rebind.test", "127.0.0.1")
    with pytest.raises(TargetNotAllowed, match="resolves to 127.0.0.1, a loopback address"):
        put(f"https://rebind.test:{server.port}/hook", DATA, HEADERS, timeout=5.0)
    assert server.connections == 0


def test_an_allowed_name_is_resolved_once_and_pinned(
    servers: Callable[..., Server], dns: FakeDNS, settings: Any
) -> None:
    allow(settings, "http://hooks.test:")
    server = servers(ok)
    dns.set("hooks.test", "127.0.0.1")
    url = f"http://hooks.test:{server.port}/hook"
    assert put(url, DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
    assert put(url, DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
    assert dns.asked == ["hooks.test", "hooks.test"]  # once per put, by the check only
    assert [r.headers["host"] for r in server.received] == [f"hooks.test:{server.port}"] * 2
    assert server.connections == 1


def test_a_kept_alive_connection_is_used_only_for_the_address_just_checked(
    servers: Callable[..., Server], dns: FakeDNS, settings: Any
) -> None:
    allow(settings, "http://hooks.test:")
    first = servers(ok, host="127.0.0.1")
    second = servers(ok, host="127.0.0.3", port=first.port)
    dns.set("hooks.test", "127.0.0.1")
    url = f"http://hooks.test:{first.port}/hook"
    put(url, DATA, HEADERS, timeout=5.0)
    dns.set("hooks.test", "127.0.0.3")
    put(url, DATA, HEADERS, timeout=5.0)
    assert (len(first.received), len(second.received)) == (1, 1)


def test_the_next_checked_address_is_tried_when_connecting_fails(
    servers: Callable[..., Server], dns: FakeDNS, settings: Any
) -> None:
    allow(settings, "http://hooks.test:")
    server = servers(ok)
    dns.set("hooks.test", "127.0.0.2", "127.0.0.1")  # nothing listens on 127.0.0.2
    url = f"http://hooks.test:{server.port}/hook"
    assert put(url, DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
    assert dns.asked == ["hooks.test"]


def test_environment_proxies_and_netrc_are_not_used(
    servers: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    proxy = servers(ok)
    server = servers(ok)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://user:secret@127.0.0.1:{proxy.port}")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert put(server.url(), DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
    assert proxy.connections == 0
    [received] = server.received
    assert received.request_line == "PUT /hook HTTP/1.1"  # not a proxy's absolute URL
    assert "authorization" not in received.headers  # .netrc passwords stay here
    assert "proxy-authorization" not in received.headers


def test_the_session_refuses_requests_put_did_not_check(servers: Callable[..., Server]) -> None:
    server = servers(ok)
    with pytest.raises(TargetNotAllowed, match="send deliveries with pubsubpull.transport.put"):
        transport.session().put(server.url(), data=DATA)
    assert server.connections == 0


# TLS to a pinned address: SNI and the certificate check use the URL's host name.


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    server: ssl.SSLContext
    names: list[str]  # server names the client asked for (SNI)


@pytest.fixture
def tls(tmp_path: Path) -> Certificates:
    """A CA (trusted by requests through REQUESTS_CA_BUNDLE) and a server for hooks.test only."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None = None,
        issuer_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), False
            )
        return builder.sign(issuer_key or key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("pubsubpull test CA", ca_key)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate("hooks.test", leaf_key, ca.subject, ca_key)
    pem = serialization.Encoding.PEM
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    chain = tmp_path / "server.pem"
    chain.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + leaf.public_bytes(pem)
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(chain)
    names: list[str] = []

    def record_server_name(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        names.append(name or "")

    server.sni_callback = record_server_name
    return Certificates(ca_file, server, names)


def test_tls_to_a_pinned_address_uses_the_url_host_name(
    servers: Callable[..., Server],
    dns: FakeDNS,
    settings: Any,
    tls: Certificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    allow(settings, "https://hooks.test:")
    server = servers(ok, tls=tls.server)
    dns.set("hooks.test", "127.0.0.1")
    url = f"https://hooks.test:{server.port}/hook"
    assert put(url, DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
    assert put(url, DATA, HEADERS, timeout=5.0) == Response(200, b"ok")
    assert tls.names == ["hooks.test"]  # SNI: the name, though the socket goes to 127.0.0.1
    assert [r.headers["host"] for r in server.received] == [f"hooks.test:{server.port}"] * 2
    assert dns.asked == ["hooks.test"] * 2
    assert server.connections == 1  # kept alive


def test_tls_certificate_must_match_the_url_host_name(
    servers: Callable[..., Server],
    dns: FakeDNS,
    settings: Any,
    tls: Certificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    allow(settings, "https://other.test:")
    server = servers(ok, tls=tls.server)
    dns.set("other.test", "127.0.0.1")  # the same server, whose certificate names hooks.test
    with pytest.raises(requests.exceptions.SSLError, match="other.test"):
        put(f"https://other.test:{server.port}/hook", DATA, HEADERS, timeout=5.0)
    assert tls.names == ["other.test"]
    assert server.received == []
