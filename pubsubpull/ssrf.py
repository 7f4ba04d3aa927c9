"""SSRF guard for subscription targets: which URLs pubsubpull may send changes to.

A target is accepted when it starts with a prefix in ``PUBSUBPULL["ALLOWED_TARGETS"]``
(compared on the parsed URL, so ``http://127.0.0.1:80@evil.com/`` does not pass as
``http://127.0.0.1:``), or when it is encrypted (https, or a broker's TLS scheme: rediss,
amqps) and every address its host resolves to is public. Broker URLs (:data:`BROKER_PORTS`:
``redis://``, ``nats://``, ``amqp://`` and their TLS forms) are checked by host and port as
http ones; their credentials are taken off before the check (``pubsubpull.sinks``).
Private, loopback, link-local (cloud metadata), multicast, reserved, unspecified, shared
(carrier-grade NAT), site-local and unique-local addresses are refused, also when wrapped
in IPv6 (IPv4-mapped, 6to4, NAT64). Paths with ``.`` or ``..`` segments (also
percent-encoded, such as ``%2e%2e``) or an encoded ``/`` or ``\\`` (``%2f``, ``%5c``) are
refused: a receiver that decodes them could serve a path outside an allowed prefix.

At delivery time :func:`check_at_delivery` resolves the host once and returns the checked
addresses, so the connection goes to an address that was checked (``transport.py``), not to
whatever a second lookup answers (DNS rebinding).

Host names are resolved through the module-level :data:`resolver`, which tests replace.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pubsubpull import conf

__all__ = [
    "BROKER_PORTS",
    "MAX_LENGTH",
    "Destination",
    "TargetNotAllowed",
    "check_at_delivery",
    "check_target",
    "prefix_problem",
    "resolve_host",
    "resolver",
]

MAX_LENGTH = 2000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_WHAT_TO_DO = (
    "targets must be https to a public address, "
    "or start with a prefix in PUBSUBPULL['ALLOWED_TARGETS']"
)
#: Broker schemes a subscription may target (``pubsubpull.sinks``), with their default ports.
BROKER_PORTS = {"redis": 6379, "rediss": 6379, "nats": 4222, "amqp": 5672, "amqps": 5671}
_DEFAULT_PORTS = {"http": 80, "https": 443, **BROKER_PORTS}
# Schemes whose traffic is encrypted: the only ones allowed to public addresses without a
# prefix in ALLOWED_TARGETS, as https is for webhooks.
_ENCRYPTED = ("https", "rediss", "amqps")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_METADATA = ipaddress.IPv4Address("169.254.169.254")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# A host whose last label looks numeric is meant as an IPv4 address; resolvers accept
# shorthand such as 127.1, 0x7f.1 or 2130706433 for 127.0.0.1, so only dotted quads pass.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
# A percent-encoded "/" or "\\": servers and proxies may decode it into a path separator.
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)
# A server or proxy may decode a path more than once (%252e -> %2e -> .): look this deep.
_DECODE_ROUNDS = 3


class TargetNotAllowed(ValueError):
    """A subscription target pubsubpull refuses to send to; the message says why and what to do."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``socket.getaddrinfo``), as strings.

    Raises ``OSError`` (``socket.gaierror``) when the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


#: The function used to resolve host names: ``(host, port) -> [address, ...]``.
#: Replace it (e.g. with ``monkeypatch.setattr``) to test without DNS.
resolver: Callable[[str, int], list[str]] = resolve_host


@dataclass(frozen=True)
class _Target:
    """The parts of a checked URL, lower-cased where case does not matter."""

    scheme: str
    host: str  # without brackets
    port: int | None
    rest: str  # path (at least "/") and query

    @property
    def authority(self) -> str:
        """``host[:port]``, IPv6 addresses in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.rest}"


@dataclass(frozen=True)
class Destination:
    """A target checked at delivery time, and the addresses a connection to it may use."""

    url: str  # normalised, as check_target returns it
    scheme: str  # "http", "https" or a broker scheme (BROKER_PORTS)
    host: str  # host name or IP address, without brackets: TLS server name and Host header
    port: int  # the URL's port, or the scheme's default
    authority: str  # host[:port] as the URL writes it: the Host header
    addresses: tuple[str, ...]  # checked IP addresses, in the resolver's order of preference


@dataclass(frozen=True)
class _Prefix:
    """An entry of ``ALLOWED_TARGETS``, parsed."""

    scheme: str
    host: str
    port: int | None
    any_port: bool
    rest: str


def check_target(url: str, allowed: Sequence[str] | None = None, resolve: bool = True) -> str:
    """Return ``url`` normalised if pubsubpull may send to it, else raise :class:`TargetNotAllowed`.

    ``allowed`` defaults to ``PUBSUBPULL["ALLOWED_TARGETS"]``; a URL under one of its
    prefixes is accepted without looking at addresses. Otherwise the URL must be https and
    its host must be public: literal IP addresses are checked directly, host names are
    resolved (all addresses) unless ``resolve`` is false (syntax-only check).
    """
    target = _parse(url)
    if not _is_allowed(target, allowed):
        _check_public(target, resolve)
    return target.url


def check_at_delivery(url: str) -> Destination:
    """Check ``url`` right before sending to it and return where to connect.

    The host is resolved once, here; the caller must connect to one of the returned
    ``addresses`` and not resolve the name again, so a name that answers a public address
    to this check and a private one to the next lookup (DNS rebinding) cannot reach the
    private one. Every address must be public unless the URL is under a prefix in
    ``PUBSUBPULL["ALLOWED_TARGETS"]``; names under such a prefix are still resolved once
    and pinned. Raises :class:`TargetNotAllowed`.
    """
    target = _parse(url)
    if _is_allowed(target, None):
        literal = _ip_literal(target.host)
        addresses = [literal] if literal is not None else _resolve(target)
    else:
        addresses = _check_public(target, resolve=True)
    return Destination(
        url=target.url,
        scheme=target.scheme,
        host=target.host,
        port=target.port or _DEFAULT_PORTS[target.scheme],
        authority=target.authority,
        addresses=tuple(dict.fromkeys(str(address) for address in addresses)),
    )


def prefix_problem(prefix: object) -> str | None:
    """What is wrong with an ``ALLOWED_TARGETS`` entry, or ``None`` if it is usable.

    Unusable entries never match; this lets a system check report them.
    """
    if not isinstance(prefix, str):
        return f"{prefix!r} is not a string: write a URL prefix such as 'http://127.0.0.1:8001/'"
    try:
        _parse_prefix(prefix)
    except TargetNotAllowed as error:
        return f"{prefix!r} is not a usable prefix: {error}"
    return None


def _parse(url: str) -> _Target:
    """Parse and validate the syntax of a target URL."""
    if not isinstance(url, str):
        raise TargetNotAllowed(f"target must be a URL string, not {type(url).__name__}")
    if not url:
        raise TargetNotAllowed("target is empty: give an absolute https URL")
    if len(url) > MAX_LENGTH:
        raise TargetNotAllowed(
            f"target is {len(url)} characters long: use a URL of at most {MAX_LENGTH}"
        )
    match = _SCHEME.match(url)
    if match is None or match.group(1).lower() not in _DEFAULT_PORTS:
        raise TargetNotAllowed(
            f"{url[:100]!r} is not an absolute http(s) URL: give one like "
            "https://hooks.example.com/ (or a broker URL: redis://, rediss://, nats://, amqp://, "
            "amqps://)"
        )
    bad = next((c for c in url if not "!" <= c <= "~" or c == "\\"), None)
    if bad is not None:
        raise TargetNotAllowed(
            f"{url[:100]!r} contains {bad!r}: percent-encode spaces and other characters, "
            "and write international host names in punycode (xn--)"
        )
    if "#" in url:
        raise TargetNotAllowed(f"{url} has a fragment: remove the '#' part")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise TargetNotAllowed(f"{url} is not a valid URL ({error})") from None
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        raise TargetNotAllowed(
            f"{url} contains user information (user:password@): remove it; "
            "receivers authenticate deliveries by their signature"
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise TargetNotAllowed(f"{url} has no host: give one like https://hooks.example.com/")
    _check_host_syntax(url, host, bracketed=parts.netloc.startswith("["))
    if port == 0:
        raise TargetNotAllowed(f"{url} has port 0: give a port from 1 to 65535")
    if scheme not in BROKER_PORTS:  # a broker's path is a database or vhost, not served
        _check_path(url, parts.path)
    rest = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme=scheme, host=host, port=port, rest=rest)


def _check_path(url: str, path: str) -> None:
    """Refuse paths that could leave an allowed prefix once a server or proxy decodes them.

    ``/hooks/..%2fadmin`` starts with ``/hooks/`` but a server that decodes ``%2f`` before
    normalising serves ``/admin``. Refused: ``.`` and ``..`` segments, also percent-encoded
    (``%2e``, any case, ``..;`` as Tomcat reads it) or double-encoded, and an encoded ``/``
    or ``\\`` anywhere in the path.
    """
    text = path
    for _ in range(_DECODE_ROUNDS):
        if _ENCODED_SEPARATOR.search(text):
            raise TargetNotAllowed(
                f"{url} has an encoded '/' or '\\' (%2F or %5C, in any case) in its path: "
                "write the path without them; a receiver may decode them into separators"
            )
        decoded = unquote(text)
        segments = re.split(r"[/\\]", decoded)
        if any(segment.split(";")[0] in (".", "..") for segment in segments):
            raise TargetNotAllowed(
                f"{url} has '.' or '..' path segments (also when percent-encoded, such as "
                "%2e%2e): remove them and write the path the receiver serves"
            )
        if decoded == text:
            return
        text = decoded


def _check_host_syntax(url: str, host: str, bracketed: bool) -> None:
    """Refuse host names that are neither DNS names nor canonical IP addresses."""
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TargetNotAllowed(f"{url} has an invalid IPv6 address {host!r}") from None
        return
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise TargetNotAllowed(
                f"{url} has host {host!r}, not a valid IPv4 address: "
                "write IPv4 addresses as four decimal numbers, such as 192.0.2.1"
            ) from None
        return
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise TargetNotAllowed(
            f"{url} has an invalid host name {host!r}: use letters, digits, hyphens and dots, "
            "with no empty labels"
        )


def _ip_literal(host: str) -> IPAddress | None:
    """The address a host is written as, if it is an IP address literal."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_allowed(target: _Target, allowed: Sequence[str] | None) -> bool:
    """Whether ``target`` is under a prefix of ``allowed`` (default: the setting)."""
    return any(_under(target, prefix) for prefix in _prefixes(allowed))


def _check_public(target: _Target, resolve: bool) -> list[IPAddress]:
    """Refuse ``target`` unless it is https to public addresses; return the addresses checked.

    Without ``resolve`` a host name is checked for syntax only and no address is returned.
    """
    if target.scheme == "nats":
        raise TargetNotAllowed(
            f"{target.url} is not under a prefix in PUBSUBPULL['ALLOWED_TARGETS']: pubsubpull "
            "connects to NATS without TLS, so add a prefix covering the server to "
            "PUBSUBPULL['ALLOWED_TARGETS']"
        )
    if target.scheme not in _ENCRYPTED:
        encrypted = {"redis": "rediss", "amqp": "amqps"}.get(target.scheme, "https")
        raise TargetNotAllowed(
            f"{target.url} is not {encrypted} and not under a prefix in "
            f"PUBSUBPULL['ALLOWED_TARGETS']: use {encrypted} to a public address, "
            "or add a prefix covering it to PUBSUBPULL['ALLOWED_TARGETS']"
        )
    literal = _ip_literal(target.host)
    if literal is not None:
        _check_address(target.url, literal, "points to")
        return [literal]
    if target.host == "localhost" or target.host.endswith(".localhost"):
        raise TargetNotAllowed(f"{target.url} names localhost, a loopback address: {_WHAT_TO_DO}")
    if not resolve:
        return []
    addresses = _resolve(target)
    for address in addresses:
        _check_address(target.url, address, "resolves to")
    return addresses


def _resolve(target: _Target) -> list[IPAddress]:
    """Every address the target's host resolves to; refuse names that do not resolve."""
    port = target.port or _DEFAULT_PORTS[target.scheme]
    try:
        found = resolver(target.host, port)
    except (OSError, UnicodeError) as error:
        raise TargetNotAllowed(
            f"{target.url}: host {target.host!r} does not resolve ({error}): "
            "check the name, or use a public address"
        ) from None
    if not found:
        raise TargetNotAllowed(
            f"{target.url}: host {target.host!r} resolves to no address: "
            "check the name, or use a public address"
        )
    addresses = []
    for text in found:
        try:
            addresses.append(ipaddress.ip_address(text))
        except ValueError:
            raise TargetNotAllowed(
                f"{target.url}: host {target.host!r} resolves to {text!r}, not an IP address"
            ) from None
    return addresses


def _check_address(url: str, address: IPAddress, verb: str) -> None:
    """Refuse ``address`` unless it is public."""
    kind = _non_public_kind(address)
    if kind is not None:
        raise TargetNotAllowed(f"{url} {verb} {address}, {kind} address: {_WHAT_TO_DO}")


def _non_public_kind(address: IPAddress) -> str | None:
    """Why ``address`` is not public ("a private", "a loopback", ...), or ``None`` if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = _non_public_kind(embedded)
            return None if inner is None else f"an IPv6 form of {embedded}, {inner}"
        checks6: list[tuple[bool, str]] = [
            (address.is_unspecified, "an unspecified"),
            (address.is_loopback, "a loopback"),
            (address.is_link_local, "a link-local"),
            (address.is_multicast, "a multicast"),
            (address.is_site_local, "a site-local"),
            (address in _UNIQUE_LOCAL, "a unique local (ULA)"),
            (address.is_private, "a private"),
            (address.is_reserved, "a reserved"),
            (not address.is_global, "a non-public"),
        ]
        return next((kind for matched, kind in checks6 if matched), None)
    checks4: list[tuple[bool, str]] = [
        (address.is_unspecified or address in _THIS_NETWORK, "an unspecified"),
        (address.is_loopback, "a loopback"),
        (address == _METADATA, "a link-local (cloud metadata)"),
        (address.is_link_local, "a link-local"),
        (address.is_multicast, "a multicast"),
        (address in _SHARED, "a shared (carrier-grade NAT)"),
        (address.is_reserved, "a reserved"),
        (address.is_private, "a private"),
        (not address.is_global, "a non-public"),
    ]
    return next((kind for matched, kind in checks4 if matched), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, IPv4-compatible, 6to4 or NAT64 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _prefixes(allowed: Sequence[str] | None) -> tuple[_Prefix, ...]:
    """The usable prefixes of ``allowed`` (default ``PUBSUBPULL["ALLOWED_TARGETS"]``)."""
    if allowed is None:
        allowed = conf.settings.ALLOWED_TARGETS or []
    if isinstance(allowed, str):
        allowed = [allowed]
    # only strings can be prefixes (prefix_problem): the others cannot be cache keys either
    return _usable_prefixes(tuple(entry for entry in allowed if isinstance(entry, str)))


@functools.lru_cache(maxsize=16)
def _usable_prefixes(allowed: tuple[str, ...]) -> tuple[_Prefix, ...]:
    # Parsed once per value of the setting, not on every delivery (it was a sixth of the
    # CPU of a send to a loopback target).
    return tuple(_parse_prefix(entry) for entry in allowed if prefix_problem(entry) is None)


def _parse_prefix(prefix: str) -> _Prefix:
    """Parse an ``ALLOWED_TARGETS`` entry; its host part must be complete."""
    scheme, separator, after = prefix.partition("://")
    if not separator or scheme.lower() not in _DEFAULT_PORTS:
        raise TargetNotAllowed(
            "it must start with http:// or https:// (or a broker scheme: "
            f"{', '.join(f'{name}://' for name in BROKER_PORTS)})"
        )
    cut = min((i for i in (after.find(c) for c in "/?#") if i >= 0), default=len(after))
    authority, rest = after[:cut], after[cut:]
    if "@" in authority or "#" in rest:
        raise TargetNotAllowed("it must not contain user information or a fragment")
    any_port = authority.endswith(":")
    target = _parse(f"{scheme}://{authority[:-1] if any_port else authority}/")
    if any_port and target.port is not None:
        raise TargetNotAllowed("it has a port and a trailing ':'")
    if rest and not rest.startswith("/"):
        rest = "/" + rest
    return _Prefix(target.scheme, target.host, target.port, any_port, rest)


def _under(target: _Target, prefix: _Prefix) -> bool:
    """Whether ``target`` is under ``prefix``: same scheme, host and port, path continues it.

    Compared on parsed parts, so an authority that only starts like the prefix's (another
    port, ``127.0.0.1:80@evil.com``, ``localhost.evil.com``) does not match. A prefix whose
    host ends with ``:`` allows any port; without a port it allows only the default one.
    """
    return (
        target.scheme == prefix.scheme
        and target.host == prefix.host
        and (prefix.any_port or target.port == prefix.port)
        and target.rest.startswith(prefix.rest)
    )
