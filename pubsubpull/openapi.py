"""OpenAPI 3.1 description of the pull and subscription endpoints, served at ``openapi.json``."""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings

from . import __version__, conf, positions, registry, ssrf, subscriptions, topics
from .models import DEFAULT_BATCH_SIZE, Subscription

JSON = "application/json"
NULLABLE_OBJECT = {"type": ["object", "null"]}
URL = {"type": "string", "format": "uri"}
_PATTERN = rf"\s*{topics.PATTERN}\s*"
POSITION = f"^{positions.PATTERN}$"  # what pubsubpull.positions.Position.parse accepts
SHAPE = f"^{positions.SHAPE}$"  # a position this server wrote
TOPICS = rf"^{_PATTERN}(,{_PATTERN})*$"  # as pubsubpull.topics.parse accepts them
TOPIC = f"^{topics.PATTERN}$"  # one pattern, as pubsubpull.topics.validate accepts it
NAME = f"^{subscriptions.NAME.pattern}$"  # subscription names
# Its words: the path parameter's and a 404's description.
NAME_RULE = f"1-{subscriptions.NAME_LENGTH} letters, digits, `-` or `_`"
BATCH_SIZE = {"minimum": subscriptions.BATCH_SIZE[0], "maximum": subscriptions.BATCH_SIZE[1]}
MAX_BYTES = {"minimum": subscriptions.MAX_BYTES[0], "maximum": subscriptions.MAX_BYTES[1]}
PAYLOAD = {"type": "string", "enum": list(Subscription.Payload.values)}
FORMAT = {"type": "string", "enum": list(Subscription.Format.values)}
# What pubsubpull.subscriptions accepts as a header name and value.
HEADER_NAME = f"^{subscriptions.HEADER_NAME.pattern}$"
HEADER_VALUE = f"^{subscriptions.HEADER_VALUE.pattern}$"
# What pubsubpull.ssrf checks before looking at the host: an http(s) URL, or a broker's
# (pubsubpull.sinks: redis(s), nats, amqp(s)), of printable ASCII without backslash or
# fragment. Whether the host may be sent to is not syntax.
TARGET = (
    r"^([Hh][Tt][Tt][Pp][Ss]?|[Rr][Ee][Dd][Ii][Ss][Ss]?|[Nn][Aa][Tt][Ss]|[Aa][Mm][Qq][Pp][Ss]?)"
    r'://[!"$-\[\]-~]+$'
)
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {**TIME, "type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A response with a JSON body."""
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _page(description: str, schema: dict[str, Any], prefetch: bool = False) -> dict[str, Any]:
    """A response with a page of results, naming the next page in a ``Link`` header too
    (and, with ``prefetch``, the page after it)."""
    text = (
        'The `next` URL as `<url>; rel="next"` (RFC 8288), absent when `next` is null: a '
        "client can ask for the next page before decoding this one."
    )
    if prefetch:
        text += (
            ' Then the page after it, when there is one, as `<url>; rel="prefetch"`: a client '
            "can ask for both at once."
        )
    link = {"description": text, "schema": {"type": "string"}}
    return {**_json(description, schema), "headers": {"Link": link}}


def _errors(*statuses: str) -> dict[str, Any]:
    # Every endpoint authenticates (429: too many wrong Basic passwords) and reads the
    # database (503: away, or a read too slow).
    return {
        status: {"$ref": f"#/components/responses/{status}"} for status in (*statuses, "429", "503")
    }


def _named(status: str, response: str) -> dict[str, Any]:
    """A status answered with a response of ``components/responses`` named other than it."""
    return {status: {"$ref": f"#/components/responses/{response}"}}


def _query(name: str, description: str, schema: dict[str, Any], empty: bool) -> dict[str, Any]:
    """A query parameter; ``empty``: whether ``name=`` is taken as leaving it out."""
    parameter = {"name": name, "in": "query", "description": description, "schema": schema}
    return {**parameter, "allowEmptyValue": empty}


def _path(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    parameter = {"name": name, "in": "path", "required": True, "description": description}
    return {**parameter, "schema": schema}


def _limit() -> dict[str, Any]:
    maximum = conf.settings.MAX_PAGE_SIZE
    default = min(conf.settings.PAGE_SIZE, maximum)
    return _query(
        "limit",
        "Page size.",
        {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
        empty=True,
    )


def _label() -> dict[str, Any]:
    return _path(
        "label",
        "A tracked model, as `app_label.model_name` (case-insensitive).",
        {
            "type": "string",
            "pattern": "^[A-Za-z0-9_]+[.][A-Za-z0-9_]+$",
            "examples": [t.label for t in registry.tracked()],
        },
    )


def _paths() -> dict[str, Any]:
    return {
        "/": {
            "get": {
                "operationId": "directory",
                "summary": "The tracked models this caller may read, and the other endpoints",
                "responses": {"200": _json("The directory", _ref("Directory")), **_errors("401")},
            }
        },
        "/models/{label}/": {
            "get": {
                "operationId": "instances",
                "summary": "Rows of a tracked model in primary key order",
                "parameters": [
                    _label(),
                    _query(
                        "after",
                        "Continue after this primary key (the `next` URL carries it).",
                        {"type": "string", "minLength": 1},
                        empty=False,
                    ),
                    _limit(),
                ],
                "responses": {
                    "200": _page("A page of rows", _ref("RowsPage"), prefetch=True),
                    **_errors("400", "401", "403", "404"),
                },
            }
        },
        "/models/{label}/{pk}/": {
            "get": {
                "operationId": "instance",
                "summary": "One row of a tracked model",
                "parameters": [
                    _label(),
                    _path("pk", "The row's primary key.", {"type": "string", "pattern": "^[^/]+$"}),
                ],
                "responses": {
                    "200": _json("The row", _ref("Row")),
                    **_errors("400", "401", "403", "404"),
                },
            }
        },
        "/changes/": {
            "get": {
                "operationId": "changes",
                "summary": "Changes after a position, of the models this caller may read",
                "description": (
                    "Only changes of committed transactions below the safe horizon come, in "
                    "position order: a reader continuing from `cursor` never misses one."
                ),
                "parameters": [
                    _query(
                        "after",
                        "A position: the `cursor` of a previous page or a change `id`; or "
                        "`now`: only changes not visible yet (with `wait`, the next ones).",
                        {"type": "string", "pattern": f"^({positions.PATTERN}|now)$"},
                        empty=True,
                    ),
                    _query(
                        "topics",
                        "Comma-separated topic patterns: dot-separated words, `*` matches one "
                        "word, `#` zero or more (e.g. `shop.order.*,shop.customer.delete`). "
                        "pubsubpull's own `pubsubpull.subscription.*` events come only to "
                        "patterns starting with `pubsubpull`.",
                        {"type": "string", "pattern": TOPICS},
                        empty=True,
                    ),
                    _limit(),
                    _query(
                        "wait",
                        "Seconds to wait for a first change when there is none yet (long poll), "
                        f"capped at {conf.settings.MAX_WAIT}.",
                        {"type": "number", "minimum": 0, "maximum": 1e9, "default": 0},
                        empty=True,
                    ),
                ],
                "responses": {
                    "200": _page("A page of changes", _ref("ChangesPage")),
                    **_errors("400", "401"),
                },
            }
        },
        "/subscriptions/": {
            "get": {
                "operationId": "subscriptions",
                "summary": "The caller's subscriptions",
                "responses": {
                    "200": _json("The caller's subscriptions", _ref("SubscriptionList")),
                    **_errors("401"),
                },
            }
        },
        "/subscriptions/{name}/": {
            "parameters": [
                _path(
                    "name",
                    f"The subscription's name, unique per caller: {NAME_RULE} (any other name "
                    "is not found).",
                    {"type": "string", "pattern": NAME, "examples": ["big-orders"]},
                )
            ],
            "put": {
                "operationId": "put_subscription",
                "summary": "Create or replace one of the caller's subscriptions",
                "description": (
                    "Changes are delivered by HTTP PUT to `target` in batches (or one POST "
                    "per change: `format`), signed with `secret` (Standard Webhooks). "
                    "Replacing keeps `cursor`, `status`, `secret` and `headers` unless the "
                    "body sets them; `topics`, `filter`, `batch_size`, `max_bytes`, `payload` "
                    "and `format` take their defaults when left out. Setting `status` pauses "
                    "or resumes (`active` also clears failures); setting `cursor` replays "
                    "from there. Authenticated by the session cookie, the request needs "
                    "Django's CSRF token."
                ),
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("SubscriptionRequest")}},
                },
                "responses": {
                    "200": _json("Replaced", _ref("Subscription")),
                    "201": _json("Created", _ref("Subscription")),
                    **_named("400", "InvalidSubscription"),
                    **_errors("401"),
                    **_named("403", "CsrfFailed"),
                    **_named("404", "NoSubscription"),
                },
            },
            "get": {
                "operationId": "subscription",
                "summary": "One of the caller's subscriptions: its state, lag and last error",
                "responses": {
                    "200": _json("The subscription", _ref("Subscription")),
                    **_errors("401"),
                    **_named("404", "NoSubscription"),
                },
            },
            "delete": {
                "operationId": "delete_subscription",
                "summary": "Remove one of the caller's subscriptions",
                "description": "Authenticated by the session cookie, the request needs Django's "
                "CSRF token.",
                "responses": {
                    "204": {"description": "Removed"},
                    **_errors("401"),
                    **_named("403", "CsrfFailed"),
                    **_named("404", "NoSubscription"),
                },
            },
        },
        "/subscriptions/{name}/ping/": {
            "parameters": [
                _path(
                    "name",
                    "The subscription's name.",
                    {"type": "string", "pattern": NAME, "examples": ["big-orders"]},
                )
            ],
            "post": {
                "operationId": "ping_subscription",
                "summary": "Send a pubsubpull.ping event to the subscription's target now",
                "description": (
                    "Delivered as a batch would be (signed, with its headers, in its "
                    "format), outside the queue: the cursor is untouched and nothing is "
                    "recorded. The answer says how the target answered; a target that "
                    "fails is still a 200 here. Authenticated by the session cookie, the "
                    "request needs Django's CSRF token."
                ),
                "responses": {
                    "200": _json(
                        "How the target answered",
                        {
                            "type": "object",
                            "required": ["status_code", "duration", "error"],
                            "properties": {
                                "status_code": {"type": ["integer", "null"]},
                                "duration": {"type": "number", "description": "seconds"},
                                "error": {"type": ["string", "null"]},
                            },
                        },
                    ),
                    **_errors("400", "401"),
                    **_named("403", "CsrfFailed"),
                    **_named("404", "NoSubscription"),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "responses": {
                    "200": _json(
                        "An OpenAPI 3.1 document",
                        {"type": "object", "required": ["openapi", "info", "paths"]},
                    ),
                    **_errors("401"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics, for staff users",
                "responses": {
                    "200": {
                        "description": "Prometheus' text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors("401", "403", "404"),
                },
            }
        },
    }


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {
                "type": "string",
                "enum": [
                    "invalid_parameter",
                    "invalid_json",
                    "invalid_subscription",
                    "not_authenticated",
                    "csrf_failed",
                    "permission_denied",
                    "not_found",
                ],
            },
            "detail": {"type": "string", "description": "What happened and what to do"},
            "parameter": {"type": "string", "description": "The parameter at fault (400)"},
            "fields": {
                "type": "object",
                "description": "Messages by field at fault (`invalid_subscription`); `body` when "
                "the body is not a JSON object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
    "Directory": {
        "type": "object",
        "required": ["models", "changes", "subscriptions", "openapi"],
        "properties": {
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["label", "url", "changes"],
                    "properties": {
                        "label": {"type": "string"},
                        "url": {**URL, "description": "Its rows"},
                        "changes": {**URL, "description": "Its changes"},
                        "rows": {
                            "type": ["integer", "null"],
                            "description": "PostgreSQL's estimate of its rows (for progress "
                            "bars); null until the table was first analyzed",
                        },
                    },
                },
            },
            "changes": URL,
            "subscriptions": URL,
            "openapi": URL,
        },
    },
    "Row": {
        "type": "object",
        "description": "A row as PostgreSQL's `to_jsonb`, by column name, less excluded fields",
    },
    "RowsPage": {
        "type": "object",
        "required": ["results", "next"],
        "properties": {
            "results": {"type": "array", "items": _ref("Row")},
            "next": {**URL, "type": ["string", "null"], "description": "null on the last page"},
        },
    },
    "Change": {
        "type": "object",
        "required": [
            *("id", "seq", "topic", "model", "op", "pk"),
            *("old", "new", "fields", "request", "context", "time"),
        ],
        "properties": {
            "id": {
                "type": "string",
                "pattern": SHAPE,
                "description": "Its position, to pass as `after`",
            },
            "seq": {"type": "integer", "description": "Order of recording (not of commit)"},
            "topic": {"type": "string", "examples": ["shop.order.update"]},
            "model": {"type": "string", "examples": ["shop.order"]},
            "op": {"type": "string", "enum": ["insert", "update", "delete", "truncate"]},
            "pk": {"type": ["string", "null"], "description": "null for a truncate"},
            "old": {**NULLABLE_OBJECT, "description": "The row before (update, delete)"},
            "new": {**NULLABLE_OBJECT, "description": "The row after (insert, update)"},
            "fields": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "Columns an update changed; null for other operations",
            },
            "request": {
                "type": ["object", "null"],
                "description": "The HTTP request that made the change",
                "required": ["id", "method", "path", "user"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "method": {"type": "string"},
                    "path": {"type": "string"},
                    "user": {"type": ["string", "null"], "description": "Username"},
                },
            },
            "context": {**NULLABLE_OBJECT, "description": "pubsubpull.context() metadata"},
            "time": {"type": "string", "format": "date-time"},
        },
    },
    "ChangesPage": {
        "type": "object",
        "required": ["results", "next", "cursor"],
        "properties": {
            "results": {"type": "array", "items": _ref("Change")},
            "next": {
                **URL,
                "type": ["string", "null"],
                "description": "The next page when this one is full, else null",
            },
            "cursor": {
                "type": "string",
                "pattern": SHAPE,
                "description": "Where to continue (`after`), even past changes not shown",
            },
        },
    },
    "SubscriptionRequest": {
        "type": "object",
        "required": ["target"],
        "additionalProperties": False,
        "properties": {
            "target": {
                "type": "string",
                "maxLength": ssrf.MAX_LENGTH,
                "pattern": TARGET,
                "description": "Where to PUT batches: an https URL whose host resolves only to "
                "public addresses, or a URL under a prefix in `PUBSUBPULL['ALLOWED_TARGETS']`. "
                "Private, loopback, link-local and metadata addresses are refused; redirects "
                "are not followed. Or a broker (the same address rules; without a prefix only "
                "`rediss://` and `amqps://`): `redis://[user:pass@]host:port/<db>?stream=<name>"
                "[&maxlen=N]` (XADD per change), `nats://[user:pass@]host:port?subject=<prefix>` "
                "(JetStream, `<prefix>.<topic>`), `amqp://user:pass@host:port/<vhost>?exchange="
                "<name>` (topic exchange); its credentials are stored encrypted and shown "
                "masked. `secret` and `headers` are for webhooks only.",
                "examples": [
                    "https://hooks.example.com/pubsubpull",
                    "rediss://:password@redis.example.com:6379/0?stream=changes",
                ],
            },
            "topics": {
                "type": "array",
                "items": {"type": "string", "pattern": TOPIC},
                "default": [],
                "description": "Topic patterns (`*` one word, `#` zero or more) of tracked "
                "models the caller may view, or of custom events; `[]` for all of them. "
                "pubsubpull's own `pubsubpull.subscription.failing`, `.disabled` and "
                "`.recovered` events (of the caller's subscriptions, or of all for staff) "
                "come only to patterns starting with `pubsubpull`.",
                "examples": [["shop.order.*", "shop.customer.delete"]],
            },
            "filter": {
                "type": ["string", "null"],
                "default": None,
                "description": "An SQL/JSON path predicate on the change, checked by PostgreSQL; "
                "null or empty for none.",
                "examples": ["$.new.total > 100"],
            },
            "batch_size": {"type": "integer", **BATCH_SIZE, "default": DEFAULT_BATCH_SIZE},
            "max_bytes": {
                "type": ["integer", "null"],
                **MAX_BYTES,
                "default": None,
                "description": "The largest body of a delivery, in bytes: a batch ends before "
                "its body would be larger (a single larger change goes alone). null: "
                "`PUBSUBPULL['MAX_BATCH_BYTES']`.",
            },
            "payload": {
                **PAYLOAD,
                "default": Subscription.Payload.FULL.value,
                "description": "`thin`: each change without `old` and `new` (the filter still "
                "sees them), for receivers that GET the row.",
            },
            "format": {
                **FORMAT,
                "default": Subscription.Format.BATCH.value,
                "description": '`batch`: a PUT of `{"subscription", "changes"}` per batch. '
                "`standard`: a POST per change, in order, of the Standard Webhooks payload "
                '`{"type": topic, "timestamp": time, "data": change}`, each with a '
                "`webhook-id` of its own (the same on retries); the cursor moves past each "
                "change on its 2xx, and `max_bytes` does not apply.",
            },
            "headers": {
                "type": ["object", "null"],
                "maxProperties": subscriptions.MAX_HEADERS,
                "propertyNames": {"pattern": HEADER_NAME},
                "additionalProperties": {"type": "string", "pattern": HEADER_VALUE},
                "writeOnly": True,
                "description": "Extra request headers of every delivery, e.g. "
                '`{"Authorization": "Bearer ..."}`: encrypted at rest, never shown back '
                "(`headers` in the subscription lists their names). Kept when left out; null "
                "or `{}` for none. Refused: hop-by-hop headers ("
                + ", ".join(f"`{name}`" for name in subscriptions.HOP_BY_HOP_HEADERS)
                + "), the ones pubsubpull sets ("
                + ", ".join(f"`{name}`" for name in subscriptions.SENDER_HEADERS)
                + f") and `{subscriptions.SIGNATURE_PREFIX}*`; names are case-insensitive.",
            },
            "secret": {
                "type": ["string", "null"],
                "writeOnly": True,
                "description": "Signs deliveries (Standard Webhooks): `whsec_` and base64, "
                "e.g. from `pubsubpull.webhooks.generate_secret()`; null or empty for unsigned. "
                "Never shown back. Another secret than the current one rotates it: the old one "
                "signs deliveries too (a second signature) for "
                "`PUBSUBPULL['SECRET_ROTATION_GRACE']` seconds, see `previous_secret_until`.",
            },
            "status": {
                "type": "string",
                "enum": [Subscription.Status.ACTIVE.value, Subscription.Status.PAUSED.value],
                "description": "Pause, or resume (which also clears failures).",
            },
            "cursor": {
                "type": "string",
                "pattern": POSITION,
                "description": "Deliver the changes after this position (a change `id` or a "
                "pull `cursor`): replay, or skip ahead. A new subscription starts at the "
                "current end of the log.",
            },
        },
    },
    "Subscription": {
        "type": "object",
        "description": "A subscription as its owner sees it: never its secret",
        "required": [
            *("name", "target", "topics", "filter", "batch_size", "max_bytes", "payload"),
            *("format", "headers", "signed", "previous_secret_until", "status"),
            *("cursor", "lag", "failures", "last_error", "next_attempt", "last_delivered"),
            *("created", "updated"),
        ],
        "not": {"required": ["secret"]},
        "properties": {
            "name": {"type": "string", "pattern": NAME},
            "target": {
                "type": "string",
                "description": "As normalised when saved; a broker URL's password shown as ***",
            },
            "topics": {"type": "array", "items": {"type": "string"}},
            "filter": {"type": ["string", "null"]},
            "batch_size": {"type": "integer", **BATCH_SIZE},
            "max_bytes": {
                "type": ["integer", "null"],
                **MAX_BYTES,
                "description": "null: `PUBSUBPULL['MAX_BATCH_BYTES']`",
            },
            "payload": PAYLOAD,
            "format": FORMAT,
            "headers": {
                "type": "array",
                "items": {"type": "string", "pattern": HEADER_NAME},
                "description": "The names of its extra request headers (never their values)",
            },
            "signed": {"type": "boolean", "description": "Whether it has a secret"},
            "previous_secret_until": {
                **NULLABLE_TIME,
                "description": "While a secret replaced by a PUT still signs deliveries "
                "beside the new one (`webhook-signature: v1,<new> v1,<old>`): until then",
            },
            "status": {
                "type": "string",
                "enum": list(Subscription.Status.values),
                "description": "`failing`: stopped once the retry schedule was used up, "
                "until resumed; `disabled`: the target answered 410 Gone",
            },
            "cursor": {
                "type": "string",
                "pattern": SHAPE,
                "description": "The last position delivered",
            },
            "lag": {
                "type": "integer",
                "minimum": 0,
                "maximum": subscriptions.LAG_CAP,
                "description": "Changes visible and not yet delivered, counted up to "
                f"{subscriptions.LAG_CAP}",
            },
            "failures": {
                "type": "integer",
                "minimum": 0,
                "description": "Failed attempts since the last success",
            },
            "last_error": {"type": ["string", "null"]},
            "next_attempt": {**NULLABLE_TIME, "description": "When a failed batch is retried"},
            "last_delivered": NULLABLE_TIME,
            "created": TIME,
            "updated": TIME,
        },
    },
    "SubscriptionList": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": _ref("Subscription")}},
    },
}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("Error"))


RESPONSES: dict[str, Any] = {
    "400": _error("A parameter is invalid: `parameter` names it"),
    "401": {
        **_error("No credentials, or wrong ones"),
        "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    },
    "403": _error("The caller lacks the model's `view` permission"),
    "429": {
        **_error("Too many wrong HTTP Basic passwords from this address (`throttled`)"),
        "headers": {"Retry-After": {"required": True, "schema": {"type": "string"}}},
    },
    "503": {
        **_error(
            "The database is unavailable (`database_unavailable`), or the topics or filter "
            "took longer than FILTER_TIMEOUT (`query_failed`): retry later"
        ),
        "headers": {"Retry-After": {"required": True, "schema": {"type": "string"}}},
    },
    "404": _error("Not a tracked model, or no such row"),
    "InvalidSubscription": _json(
        "The body is not JSON (`invalid_json`), or not a valid subscription "
        "(`invalid_subscription`: `fields` has the messages of each field at fault)",
        {
            "allOf": [_ref("Error")],
            "properties": {"error": {"enum": ["invalid_json", "invalid_subscription"]}},
            "if": {"properties": {"error": {"const": "invalid_subscription"}}},
            "then": {"required": ["fields"]},
        },
    ),
    "CsrfFailed": _json(
        "A write authenticated by the session cookie without Django's CSRF token "
        "(`csrf_failed`): send the token, or authenticate with a token or HTTP Basic",
        {"allOf": [_ref("Error")], "properties": {"error": {"const": "csrf_failed"}}},
    ),
    "NoSubscription": _json(
        f"The caller has no subscription of that name, or the name is not {NAME_RULE} "
        "(`not_found`)",
        {"allOf": [_ref("Error")], "properties": {"error": {"const": "not_found"}}},
    ),
}


def _security_schemes() -> dict[str, Any]:
    return {
        "token": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `manage.py pubsubpull token <username>`",
        },
        "basic": {"type": "http", "scheme": "basic"},
        "session": {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME},
    }


def schema(base_url: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the endpoints included at ``base_url``."""
    security_schemes = _security_schemes()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pubsubpull",
            "version": __version__,
            "description": "Pull tracked rows and their changes as JSON, or subscribe to "
            "have changes delivered by HTTP PUT. A model is readable by users with its `view` "
            "permission; a subscription is its owner's alone.",
        },
        "servers": [{"url": base_url.rstrip("/")}],
        "security": [{name: []} for name in security_schemes],
        "paths": _paths(),
        "components": {
            # Copies: a caller may change its document without changing the next one.
            "schemas": copy.deepcopy(SCHEMAS),
            "responses": copy.deepcopy(RESPONSES),
            "securitySchemes": security_schemes,
        },
    }
