"""SSRF guard: which subscription targets pubsubpull accepts, and what it says when it refuses.

No test resolves a real name: an autouse fixture replaces ``ssrf.resolver`` with a fake
table, and nothing connects anywhere.
"""

from __future__ import annotations

import socket

import pytest
from django.test import override_settings

from pubsubpull import ssrf
from pubsubpull.ssrf import (
    Destination,
    TargetNotAllowed,
    check_at_delivery,
    check_target,
    prefix_problem,
)

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
WHAT_TO_DO = "PUBSUBPULL['ALLOWED_TARGETS']"

# The fake DNS: host name -> addresses; names missing here do not resolve.
DNS: dict[str, list[str]] = {
    "hooks.example.com": [PUBLIC_V4, PUBLIC_V6],
    "internal.example.com": ["10.0.0.5"],
    "half.example.com": [PUBLIC_V4, "192.168.1.7"],
    "metadata.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "empty.example.com": [],
}


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Resolve names from ``DNS`` (a copy the test may change) instead of the network."""
    table = {name: list(addresses) for name, addresses in DNS.items()}

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    monkeypatch.setattr(ssrf, "resolver", resolve)
    return table


def refusal(url: str, **kwargs: object) -> str:
    """The message ``check_target`` refuses ``url`` with (fails if it accepts it)."""
    with pytest.raises(TargetNotAllowed) as info:
        check_target(url, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# Refused address classes, as literal IPs and as names resolving to them.


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.5", "a private address"),
        ("10.255.255.255", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.254", "a private address"),
        ("192.168.1.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("127.8.8.8", "a loopback address"),
        ("[::1]", "a loopback address"),
        ("169.254.1.1", "a link-local address"),
        ("169.254.169.254", "a link-local (cloud metadata) address"),
        ("[fe80::1]", "a link-local address"),
        ("[fc00::1]", "a unique local (ULA) address"),
        ("[fd00:ec2::254]", "a unique local (ULA) address"),
        ("[fec0::1]", "a site-local address"),
        ("[::ffff:127.0.0.1]", "an IPv6 form of 127.0.0.1, a loopback address"),
        ("[::ffff:10.0.0.5]", "an IPv6 form of 10.0.0.5, a private address"),
        ("[::ffff:169.254.169.254]", "a link-local (cloud metadata) address"),
        ("[64:ff9b::a00:1]", "an IPv6 form of 10.0.0.1, a private address"),
        ("[2002:a00:1::]", "an IPv6 form of 10.0.0.1, a private address"),
        ("0.0.0.0", "an unspecified address"),
        ("[::]", "an unspecified address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("100.127.255.254", "a shared (carrier-grade NAT) address"),
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("[ff02::1]", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("192.0.2.1", "a private address"),  # documentation range
        ("[2001:db8::1]", "a private address"),  # documentation range
    ],
)
def test_non_public_literal_address_is_refused(address: str, kind: str) -> None:
    message = refusal(f"https://{address}/hook")
    assert message.startswith(f"https://{address}/hook points to ")
    assert kind in message and "https to a public address" in message and WHAT_TO_DO in message


def test_literal_address_is_checked_without_dns(fake_dns: dict[str, list[str]]) -> None:
    fake_dns.clear()
    assert "a private address" in refusal("https://10.0.0.5/", resolve=False)
    assert check_target(f"https://{PUBLIC_V4}/", resolve=False) == f"https://{PUBLIC_V4}/"


def test_message_names_url_address_and_what_to_do() -> None:
    assert refusal("https://10.0.0.5/hook") == (
        "https://10.0.0.5/hook points to 10.0.0.5, a private address: targets must be https "
        "to a public address, or start with a prefix in PUBSUBPULL['ALLOWED_TARGETS']"
    )


@pytest.mark.parametrize(
    ("host", "shown", "kind"),
    [
        ("internal.example.com", "10.0.0.5", "a private address"),
        ("metadata.example.com", "169.254.169.254", "a link-local (cloud metadata) address"),
        ("mapped.example.com", "127.0.0.1", "a loopback address"),
    ],
)
def test_name_resolving_to_non_public_address_is_refused(host: str, shown: str, kind: str) -> None:
    message = refusal(f"https://{host}/hook")
    assert f"https://{host}/hook resolves to" in message and shown in message and kind in message


def test_every_resolved_address_must_be_public() -> None:
    message = refusal("https://half.example.com/")
    assert "resolves to 192.168.1.7, a private address" in message


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "api.localhost"])
def test_localhost_names_are_refused_without_asking_dns(
    host: str, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns[host.lower()] = [PUBLIC_V4]  # even a lying resolver cannot make it public
    assert "a loopback address" in refusal(f"https://{host}/")
    assert "a loopback address" in refusal(f"https://{host}/", resolve=False)


def test_localhost_resolving_to_loopback_is_refused_when_not_allowed() -> None:
    with override_settings(PUBSUBPULL={"ALLOWED_TARGETS": []}):
        assert "a loopback address" in refusal("https://localhost:8443/")


def test_name_that_does_not_resolve_is_refused() -> None:
    message = refusal("https://nowhere.example.com/hook")
    assert "host 'nowhere.example.com' does not resolve" in message
    assert "check the name" in message


def test_name_resolving_to_no_address_is_refused() -> None:
    assert "resolves to no address" in refusal("https://empty.example.com/")


def test_resolver_answer_that_is_not_an_address_is_refused(
    fake_dns: dict[str, list[str]],
) -> None:
    fake_dns["odd.example.com"] = ["not-an-ip"]
    assert "'not-an-ip', not an IP address" in refusal("https://odd.example.com/")


def test_resolver_gets_host_and_default_or_given_port(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return [PUBLIC_V4]

    monkeypatch.setattr(ssrf, "resolver", resolve)
    check_target("https://Hooks.Example.com/")
    check_target("https://hooks.example.com:8443/")
    assert asked == [("hooks.example.com", 443), ("hooks.example.com", 8443)]


# Accepted targets.


def test_https_to_public_name_is_accepted() -> None:
    assert check_target("https://hooks.example.com/in?x=1") == "https://hooks.example.com/in?x=1"


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("HTTPS://Hooks.Example.COM", "https://hooks.example.com/"),
        ("https://hooks.example.com:8443/A/b", "https://hooks.example.com:8443/A/b"),
        ("https://hooks.example.com:/x", "https://hooks.example.com/x"),
        (f"https://{PUBLIC_V4}/", f"https://{PUBLIC_V4}/"),
        (f"https://[{PUBLIC_V6.upper()}]/", f"https://[{PUBLIC_V6}]/"),
    ],
)
def test_accepted_url_is_normalised(url: str, normalised: str) -> None:
    assert check_target(url) == normalised


def test_resolve_false_skips_dns(fake_dns: dict[str, list[str]]) -> None:
    fake_dns.clear()
    assert check_target("https://not-in-dns.example.com/", resolve=False) == (
        "https://not-in-dns.example.com/"
    )


def test_http_to_public_address_is_refused() -> None:
    for url in ["http://hooks.example.com/", f"http://{PUBLIC_V4}/"]:
        message = refusal(url)
        assert "is not https" in message and WHAT_TO_DO in message


# Allowed prefixes (the test project allows http://127.0.0.1: and http://localhost:).


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("http://127.0.0.1:8001/hook", "http://127.0.0.1:8001/hook"),
        ("http://127.0.0.1", "http://127.0.0.1/"),
        ("http://localhost:9000/a?b=c", "http://localhost:9000/a?b=c"),
        ("HTTP://LocalHost:9000/", "http://localhost:9000/"),
    ],
)
def test_url_under_an_allowed_prefix_is_accepted(
    url: str, normalised: str, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns.clear()  # allowed prefixes are not resolved
    assert check_target(url) == normalised


def test_allowed_prefix_passes_at_delivery() -> None:
    assert check_at_delivery("http://127.0.0.1:8001/hook").addresses == ("127.0.0.1",)


def test_allowed_prefix_with_port_and_path() -> None:
    allowed = ["http://127.0.0.1:8001/hooks/"]
    assert check_target("http://127.0.0.1:8001/hooks/a", allowed=allowed) == (
        "http://127.0.0.1:8001/hooks/a"
    )
    for url in [
        "http://127.0.0.1:8002/hooks/a",  # another port
        "http://127.0.0.1/hooks/a",  # the default port
        "http://127.0.0.1:8001/other",  # another path
        "https://127.0.0.1:8001/hooks/a",  # another scheme
        "http://127.0.0.1:8001/hooks/../admin",  # a path that leaves the prefix
        "http://127.0.0.1:8001/hooks/%2E%2E/admin",
        "http://127.0.0.1:8001/hooks/%2e%2e%2fadmin",  # one segment, "../admin" decoded
        "http://127.0.0.1:8001/hooks/..%2fadmin",
        "http://127.0.0.1:8001/hooks/..%2Fadmin",
        "http://127.0.0.1:8001/hooks/%2E%2e%2Fadmin",
        "http://127.0.0.1:8001/hooks/..%5cadmin",
        "http://127.0.0.1:8001/hooks/%252e%252e/admin",  # decoded twice
        "http://127.0.0.1:8001/hooks/..;/admin",  # Tomcat's path parameter
    ]:
        assert refusal(url, allowed=allowed)


@pytest.mark.parametrize(
    "path",
    [
        "/hooks/%2fadmin",
        "/hooks/%2Fadmin",
        "/hooks/a%5cb",
        "/hooks/a%5Cb",
        "/hooks/a%252fb",  # %2f once decoded
    ],
)
def test_encoded_slash_or_backslash_in_the_path_is_refused(path: str) -> None:
    url = f"https://hooks.example.com{path}"
    assert refusal(url) == (
        f"{url} has an encoded '/' or '\\' (%2F or %5C, in any case) in its path: "
        "write the path without them; a receiver may decode them into separators"
    )


@pytest.mark.parametrize(
    "path",
    [
        "/hooks/%2e%2e/admin",
        "/hooks/%2E%2E/admin",
        "/hooks/%2e./admin",
        "/hooks/.%2E",
        "/hooks/%2e/admin",
        "/hooks/%252e%252e/admin",
        "/hooks/..;x=1/admin",
    ],
)
def test_encoded_dot_segments_are_refused(path: str) -> None:
    url = f"https://hooks.example.com{path}"
    message = refusal(url)
    assert message.startswith(f"{url} has '.' or '..' path segments (also when percent-encoded")
    assert "remove them" in message


@pytest.mark.parametrize(
    "path", ["/hooks/a.b", "/hooks/..a", "/hooks/a..", "/hooks/%2ea", "/hooks/a%20b", "/100%25"]
)
def test_dots_and_escapes_inside_a_segment_are_accepted(path: str) -> None:
    assert check_target(f"https://hooks.example.com{path}") == f"https://hooks.example.com{path}"


def test_allowed_prefix_without_port_allows_only_the_default_port() -> None:
    assert check_target("http://[::1]/x", allowed=["http://[::1]"]) == "http://[::1]/x"
    assert "a loopback address" in refusal("https://[::1]:8443/x", allowed=["https://[::1]"])
    assert check_target("http://[::1]:8000/x", allowed=["http://[::1]:"]) == "http://[::1]:8000/x"


def test_allowed_targets_setting_is_read_on_use() -> None:
    with override_settings(PUBSUBPULL={"ALLOWED_TARGETS": ["http://10.0.0.5:8080/"]}):
        assert check_target("http://10.0.0.5:8080/in") == "http://10.0.0.5:8080/in"
        assert "is not https" in refusal("http://127.0.0.1:8001/")
    with override_settings(PUBSUBPULL={}):
        assert "is not https" in refusal("http://127.0.0.1:8001/")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:80@evil.com/",
        "http://127.0.0.1:@evil.com/",
        "http://127.0.0.1:8001\\@evil.com/",
        "http://127.0.0.1:80.evil.com/",
        "http://127.0.0.1.evil.com/",
        "http://127.0.0.1.evil.com:8001/",
        "http://localhost.evil.com:8001/",
        "http://localhost:8001#@evil.com/",
        "http://localhost%2eevil.com:8001/",
        "http://[::ffff:127.0.0.1]:8001/",
    ],
)
def test_prefix_abuse_is_refused(url: str) -> None:
    with pytest.raises(TargetNotAllowed):
        check_target(url)


def test_userinfo_is_refused_even_under_an_allowed_prefix() -> None:
    for url in [
        "https://user:pass@hooks.example.com/",
        "https://user@hooks.example.com/",
        "http://user:pass@127.0.0.1:8001/",
        "http://@127.0.0.1:8001/",
    ]:
        message = refusal(url)
        assert "user information (user:password@): remove it" in message


# Malformed targets.


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "target is empty"),
        ("ftp://x", "is not an absolute http(s) URL"),
        ("https://", "has no host"),
        ("https:///path", "has no host"),
        ("not a url", "is not an absolute http(s) URL"),
        ("https:hooks.example.com", "is not an absolute http(s) URL"),
        ("//hooks.example.com/", "is not an absolute http(s) URL"),
        ("/relative/path", "is not an absolute http(s) URL"),
        ("javascript://alert(1)", "is not an absolute http(s) URL"),
        ("https://hooks.example.com/" + "a" * 2000, "use a URL of at most 2000"),
        ("https://hooks.example.com/#frag", "has a fragment"),
        ("https://hooks.example.com/#", "has a fragment"),
        ("https://hooks .example.com/", "contains ' '"),
        ("https://hooks.example.com/\n", "contains '\\n'"),
        ("https://exämple.com/", "punycode"),
        ("https://[::1/", "is not a valid URL"),
        ("https://hooks.example.com:99999/", "is not a valid URL"),
        ("https://hooks.example.com:http/", "is not a valid URL"),
        ("https://hooks.example.com:0/", "has port 0"),
        ("https://-hooks.example.com/", "invalid host name"),
        ("https://hooks..example.com/", "invalid host name"),
        ("https://hooks.example.com./", "invalid host name"),
        ("https://hooks_%41.example.com/", "invalid host name"),
        ("https://127.1/", "four decimal numbers"),
        ("https://2130706433/", "four decimal numbers"),
        ("https://0x7f000001/", "four decimal numbers"),
        ("https://0177.0.0.1/", "four decimal numbers"),
        ("https://[not:an:ip]/", "'not:an:ip'"),
        ("https://[v1.x]/", "invalid IPv6 address 'v1.x'"),
        ("https://hooks.example.com/a/../b", "'.' or '..' path segments"),
        ("https://hooks.example.com/a/./b", "'.' or '..' path segments"),
    ],
)
def test_malformed_url_is_refused_with_a_message(url: str, expected: str) -> None:
    assert expected in refusal(url)


def test_long_url_is_refused_before_parsing() -> None:
    url = "https://hooks.example.com/" + "a" * (ssrf.MAX_LENGTH - 26)
    assert len(url) == ssrf.MAX_LENGTH and check_target(url) == url
    assert "2001 characters long" in refusal(url + "a")


def test_non_string_target_is_refused() -> None:
    assert "must be a URL string, not int" in refusal(42)  # type: ignore[arg-type]


# Delivery-time check (DNS rebinding).


def test_delivery_check_resolves_again(fake_dns: dict[str, list[str]]) -> None:
    url = check_target("https://hooks.example.com/hook")
    check_at_delivery(url)
    fake_dns["hooks.example.com"] = ["127.0.0.1"]  # the name was rebound since subscribing
    with pytest.raises(TargetNotAllowed, match="resolves to 127.0.0.1, a loopback address"):
        check_at_delivery(url)
    del fake_dns["hooks.example.com"]
    with pytest.raises(TargetNotAllowed, match="does not resolve"):
        check_at_delivery(url)


def test_check_at_delivery_returns_every_checked_address(fake_dns: dict[str, list[str]]) -> None:
    assert check_at_delivery("HTTPS://Hooks.Example.com/hook?x=1") == Destination(
        url="https://hooks.example.com/hook?x=1",
        scheme="https",
        host="hooks.example.com",
        port=443,
        authority="hooks.example.com",
        addresses=(PUBLIC_V4, PUBLIC_V6),
    )
    fake_dns["hooks.example.com"] = [PUBLIC_V4, PUBLIC_V4]
    assert check_at_delivery("https://hooks.example.com:8443/").addresses == (PUBLIC_V4,)
    assert check_at_delivery("https://hooks.example.com:8443/").authority == (
        "hooks.example.com:8443"
    )


def test_check_at_delivery_resolves_once(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([[PUBLIC_V4], ["127.0.0.1"]])  # a rebinding name: public, then loopback
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return next(answers)

    monkeypatch.setattr(ssrf, "resolver", resolve)
    assert check_at_delivery("https://hooks.example.com/").addresses == (PUBLIC_V4,)
    assert asked == ["hooks.example.com"]


def test_check_at_delivery_refuses_like_check_target(fake_dns: dict[str, list[str]]) -> None:
    for url, expected in [
        ("https://half.example.com/", "resolves to 192.168.1.7, a private address"),
        ("https://10.0.0.5/", "points to 10.0.0.5, a private address"),
        ("https://localhost/", "a loopback address"),
        ("http://hooks.example.com/", "is not https"),
        ("https://nowhere.example.com/", "does not resolve"),
        ("https://hooks.example.com/a/%2e%2e/b", "'.' or '..' path segments"),
    ]:
        with pytest.raises(TargetNotAllowed, match=expected):
            check_at_delivery(url)


def test_check_at_delivery_pins_allowed_targets_too(fake_dns: dict[str, list[str]]) -> None:
    # Under an allowed prefix addresses are not checked, but still resolved once and pinned.
    fake_dns["localhost"] = ["::1", "127.0.0.1"]
    destination = check_at_delivery("http://localhost:9000/in")
    assert (destination.host, destination.port, destination.authority) == (
        "localhost",
        9000,
        "localhost:9000",
    )
    assert destination.addresses == ("::1", "127.0.0.1")
    del fake_dns["localhost"]
    with pytest.raises(TargetNotAllowed, match="does not resolve"):
        check_at_delivery("http://localhost:9000/in")


def test_check_at_delivery_takes_a_literal_address_as_is(fake_dns: dict[str, list[str]]) -> None:
    fake_dns.clear()
    assert check_at_delivery("http://127.0.0.1:8001/").addresses == ("127.0.0.1",)
    with override_settings(PUBSUBPULL={"ALLOWED_TARGETS": ["http://[::1]:"]}):
        destination = check_at_delivery("http://[::1]:8000/x")
    assert (destination.host, destination.authority, destination.addresses) == (
        "::1",
        "[::1]:8000",
        ("::1",),
    )
    assert check_at_delivery(f"https://{PUBLIC_V4}/").addresses == (PUBLIC_V4,)


# Allowed prefix entries.


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("http://127.0.0.1:", None),
        ("https://hooks.internal.example/in/", None),
        ("http://[::1]:8001/", None),
        (42, "is not a string"),
        ("127.0.0.1:8001", "must start with http:// or https://"),
        ("ftp://127.0.0.1/", "must start with http:// or https://"),
        ("http://user@127.0.0.1:", "must not contain user information"),
        ("http://127.0.0.1:8001/#x", "must not contain user information or a fragment"),
        ("http://127.0.0.1:8001:", "is not a usable prefix"),
        ("http://", "has no host"),
    ],
)
def test_prefix_problem(prefix: object, expected: str | None) -> None:
    problem = prefix_problem(prefix)
    assert problem is None if expected is None else (problem is not None and expected in problem)


def test_unusable_prefixes_never_match() -> None:
    allowed = ["http://user@127.0.0.1:", "127.0.0.1:8001", 42]
    assert "is not https" in refusal("http://127.0.0.1:8001/", allowed=allowed)


def test_a_single_string_setting_is_one_prefix() -> None:
    with override_settings(PUBSUBPULL={"ALLOWED_TARGETS": "http://127.0.0.1:"}):
        assert check_target("http://127.0.0.1:8001/") == "http://127.0.0.1:8001/"


def test_default_resolver_returns_every_address_as_text() -> None:
    # A numeric host: getaddrinfo parses it without asking DNS.
    assert set(ssrf.resolve_host("127.0.0.1", 80)) == {"127.0.0.1"}
