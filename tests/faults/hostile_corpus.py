"""The hostile-input corpus: values from ``tests/fixtures/security/`` plus generated ones.

Each receiver case is one signed (or deliberately mis-signed) delivery with the status the receiver documents
for it (see :mod:`previews.ingress.app`): 401 signature, 400 headers/body/payload field, 413 size, 403 allow
list, 202 ``ignored`` for other events, and 202 ``accepted`` for attacker-controlled text the pipeline never
uses (titles, branch names, bodies): those must not be carried into the stored event.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from previews.signature import sign
from tests.support.fixtures import FIXTURES
from tests.support.webhooks import SECRET, synchronize_payload

MARKER_TOKEN = "MARKER_PATH"
_SECURITY = FIXTURES / "security"
_SHELL_META = set("$`;|&(){}<>\"'\\\n\r\t *?!#~")


def fixture_strings() -> list[str]:
    """Every hostile string in ``hostile-inputs.json`` (branch names, titles, e-mails, invalid names/tags)."""
    data = json.loads((_SECURITY / "hostile-inputs.json").read_text())
    values = [
        item["value"] for key in ("branch_names", "pr_titles_and_strings", "emails") for item in data[key]
    ]
    values += [item["value"] for item in data["oci_tag_cases"] if not item["valid"]]
    values += [item["value"] for item in data["oci_repository_name_cases"] if not item["valid_name_regex"]]
    return values


def generated_strings() -> list[str]:
    """Shell injection shapes, option injection, traversal, control and look-alike characters."""
    return [
        f"$(touch {MARKER_TOKEN})",
        f"`touch {MARKER_TOKEN}`",
        f"x; touch {MARKER_TOKEN}",
        f"x && touch {MARKER_TOKEN}",
        f"x | touch {MARKER_TOKEN}",
        f"x\ntouch {MARKER_TOKEN}",
        "--upload-pack=touch /tmp/x",
        "-oProxyCommand=touch /tmp/x",
        "../../../../etc/passwd",
        "a/../../b",
        "a\x00b",
        "\x1b[2Kcleared",
        "\u202eevil\u202c",
        "\uff4f\uff57\uff4e\uff45\uff52/\uff52\uff45\uff50\uff4f",
        "owner/repo\n",
        " owner/repo",
        "owner/repo ",
        "🙂/🙃",
        "",
        "${IFS}",
        "%0a%0d",
        "A" * 5000,
    ]


def identity_hostile(value: str) -> bool:
    """A value no identity field (repository, SHA, login, action) may ever accept."""
    return value == "" or not value.isascii() or any(ch in _SHELL_META for ch in value) or len(value) > 300


HOSTILE_STRINGS = sorted({*fixture_strings(), *generated_strings()})
IDENTITY_HOSTILE = [v for v in HOSTILE_STRINGS if identity_hostile(v)]


@dataclass(frozen=True)
class Case:
    """One delivery: how to mutate the payload/headers and what the receiver must answer."""

    id: str
    status: int
    mentions: str = ""
    mutate: Callable[[dict[str, Any]], None] | None = None
    raw_body: bytes | None = None
    header_overrides: dict[str, str | bytes | None] = field(default_factory=dict)
    secret: str | None = SECRET
    accepted_without: str | None = None  # 202 accepted, and this value is nowhere in the stored event
    extra_settings: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        data = copy.deepcopy(_BASE)
        if self.mutate is not None:
            self.mutate(data)
        return data


_BASE = synchronize_payload()


def _setter(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _both_numbers(value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["number"] = value
        data["pull_request"]["number"] = value

    return mutate


PAYLOAD_FIELDS: dict[str, tuple[tuple[str | int, ...], str]] = {
    "repository.full_name": (("repository", "full_name"), "repository.full_name"),
    "head.sha": (("pull_request", "head", "sha"), "pull_request.head.sha"),
    "base.sha": (("pull_request", "base", "sha"), "pull_request.base.sha"),
    "head.repo.full_name": (
        ("pull_request", "head", "repo", "full_name"),
        "pull_request.head.repo.full_name",
    ),
    "sender.login": (("sender", "login"), "sender.login"),
    "action": (("action",), "action"),
}

INERT_FIELDS: dict[str, tuple[str | int, ...]] = {
    "title": ("pull_request", "title"),
    "head.ref": ("pull_request", "head", "ref"),
    "body": ("pull_request", "body"),
}

WRONG_TYPES: list[tuple[str, Any]] = [
    ("null", None),
    ("int", 1234567),
    ("float", 1.5),
    ("bool", True),
    ("list", ["a"]),
    ("object", {"a": 1}),
]

BAD_NUMBERS: list[tuple[str, Any]] = [
    ("zero", 0),
    ("negative", -1),
    ("too-big", 100_000),
    ("int32", 2**31),
    ("int64", 2**63),
    ("huge", 10**30),
    ("float", 7.0),
    ("bool", True),
    ("null", None),
    ("string-injection", "7; rm -rf /"),
    ("string-hex", "0x1f"),
    ("string-exp", "1e3"),
    ("string-fullwidth", "\uff17"),
    ("string-padded", " 7"),
    ("list", [7]),
]

BAD_SHAS: list[tuple[str, Any]] = [
    ("short-6", "a" * 6),
    ("short-7", "a" * 7),
    ("long-41", "a" * 41),
    ("sha256-64", "a" * 64),
    ("upper", "A" * 40),
    ("non-hex", "g" * 40),
    ("trailing-newline", "a" * 40 + "\n"),
    ("ref-name", "refs/heads/main"),
    ("branch", "main"),
]


def _delivery_id_cases() -> list[Case]:
    cases = []
    for i, value in enumerate(HOSTILE_STRINGS):
        if value != value.strip() or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value) or not value:
            continue  # not sendable as an HTTP header value
        if all((ch.isalnum() and ch.isascii()) or ch in "._-" for ch in value) and len(value) <= 100:
            continue  # a well-formed GUID-like id
        cases.append(
            Case(
                f"delivery-id-{i}",
                400,
                "X-GitHub-Delivery",
                header_overrides={"X-GitHub-Delivery": value.encode("utf-8")},
            )
        )
    return cases


def build_cases() -> list[Case]:
    """The whole receiver corpus (>= 200 cases)."""
    cases: list[Case] = []
    # signatures (401)
    cases += [
        Case("sig-missing", 401, "missing", secret=None),
        Case("sig-wrong-secret", 401, "does not match", secret="not-the-secret"),
        Case("sig-empty", 401, "missing", header_overrides={"X-Hub-Signature-256": ""}),
        Case("sig-prefix-only", 401, "malformed", header_overrides={"X-Hub-Signature-256": "sha256="}),
        Case("sig-sha1", 401, "malformed", header_overrides={"X-Hub-Signature-256": "sha1=" + "0" * 40}),
        Case(
            "sig-zeros", 401, "does not match", header_overrides={"X-Hub-Signature-256": "sha256=" + "0" * 64}
        ),
        Case("sig-short", 401, "malformed", header_overrides={"X-Hub-Signature-256": "sha256=" + "a" * 63}),
        Case("sig-long", 401, "malformed", header_overrides={"X-Hub-Signature-256": "sha256=" + "a" * 65}),
        Case("sig-non-hex", 401, "malformed", header_overrides={"X-Hub-Signature-256": "sha256=" + "z" * 64}),
        Case("sig-injection", 401, "malformed", header_overrides={"X-Hub-Signature-256": "sha256=$(id)"}),
        Case("sig-no-algo", 401, "malformed", header_overrides={"X-Hub-Signature-256": "a" * 64}),
        Case(
            "sig-over-other-body",
            401,
            "does not match",
            header_overrides={"X-Hub-Signature-256": sign(b"{}", SECRET)},
        ),
    ]
    # headers and body (400), other events (202 ignored), size (413)
    cases += [
        Case("event-missing", 400, "X-GitHub-Event", header_overrides={"X-GitHub-Event": None}),
        Case(
            "event-injection", 400, "X-GitHub-Event", header_overrides={"X-GitHub-Event": "pull_request;id"}
        ),
        Case(
            "event-newline-encoded",
            400,
            "X-GitHub-Event",
            header_overrides={"X-GitHub-Event": "pull%0arequest"},
        ),
        Case(
            "event-unicode",
            400,
            "X-GitHub-Event",
            header_overrides={"X-GitHub-Event": "pull_réquest".encode()},
        ),
        Case("delivery-missing", 400, "X-GitHub-Delivery", header_overrides={"X-GitHub-Delivery": None}),
        Case("content-type-text", 400, "Content-Type", header_overrides={"Content-Type": "text/plain"}),
        Case("content-type-xml", 400, "Content-Type", header_overrides={"Content-Type": "application/xml"}),
        Case("body-not-json", 400, "JSON", raw_body=b"{definitely not json"),
        Case("body-array", 400, "body", raw_body=b"[1,2,3]"),
        Case("body-string", 400, "body", raw_body=b'"x"'),
        Case("body-null", 400, "body", raw_body=b"null"),
        Case("body-deep-nesting", 400, "body", raw_body=b"[" * 40_000 + b"]" * 40_000),
        Case("body-invalid-utf8", 400, "", raw_body=b'{"a": "\xff\xfe"}'),
        Case(
            "body-oversize", 413, "larger than", mutate=_setter("pull_request", "body", value="x" * 200_000)
        ),
    ]
    cases += [
        Case(f"other-event-{name}", 202, header_overrides={"X-GitHub-Event": name})
        for name in ("push", "issues", "issue_comment", "workflow_run", "pull_request_review", "check_suite")
    ]
    # payload identity fields (400 naming the field)
    for name, (path, field_name) in PAYLOAD_FIELDS.items():
        for i, value in enumerate(IDENTITY_HOSTILE):
            cases.append(Case(f"{name}-hostile-{i}", 400, field_name, mutate=_setter(*path, value=value)))
        for kind, value in WRONG_TYPES:
            cases.append(Case(f"{name}-type-{kind}", 400, field_name, mutate=_setter(*path, value=value)))
    for kind, value in BAD_NUMBERS:
        cases.append(Case(f"number-{kind}", 400, "number", mutate=_both_numbers(value)))
    cases.append(
        Case("number-mismatch", 400, "pull_request.number", mutate=_setter("pull_request", "number", value=3))
    )
    for kind, value in BAD_SHAS:
        cases.append(
            Case(
                f"head-sha-{kind}",
                400,
                "pull_request.head.sha",
                mutate=_setter("pull_request", "head", "sha", value=value),
            )
        )
    cases += [
        Case("pull-request-null", 400, "pull_request", mutate=_setter("pull_request", value=None)),
        Case("head-null", 400, "pull_request.head", mutate=_setter("pull_request", "head", value=None)),
        Case("repository-string", 400, "repository", mutate=_setter("repository", value="acme/app")),
        Case(
            "labels-not-a-list",
            400,
            "pull_request.labels",
            mutate=_setter("pull_request", "labels", value="bug"),
        ),
        Case(
            "labels-too-many",
            400,
            "pull_request.labels",
            mutate=_setter("pull_request", "labels", value=[{"name": f"l{i}"} for i in range(1000)]),
        ),
        Case(
            "label-name-int",
            400,
            "pull_request.labels[0].name",
            mutate=_setter("pull_request", "labels", value=[{"name": 5}]),
        ),
        Case(
            "draft-string", 400, "pull_request.draft", mutate=_setter("pull_request", "draft", value="false")
        ),
        Case(
            "state-hostile", 400, "pull_request.state", mutate=_setter("pull_request", "state", value="$(id)")
        ),
        Case(
            "clone-url-ssh-option",
            400,
            "clone_url",
            mutate=_setter("pull_request", "head", "repo", "clone_url", value="ssh://-oProxyCommand=x/y"),
        ),
        Case(
            "clone-url-space",
            400,
            "clone_url",
            mutate=_setter("pull_request", "head", "repo", "clone_url", value="https://x/ y"),
        ),
        Case(
            "clone-url-ext",
            400,
            "clone_url",
            mutate=_setter("pull_request", "head", "repo", "clone_url", value="ext::sh -c touch% /tmp/x"),
        ),
        Case(
            "base-repo-other",
            400,
            "pull_request.base.repo.full_name",
            mutate=_setter("pull_request", "base", "repo", "full_name", value="evil/other"),
        ),
    ]
    # accepted, but the attacker's text is not carried into the stored event
    for name, path in INERT_FIELDS.items():
        for i, value in enumerate(IDENTITY_HOSTILE):
            if len(value) < 4:
                continue
            cases.append(
                Case(f"{name}-inert-{i}", 202, mutate=_setter(*path, value=value), accepted_without=value)
            )
    cases += [
        Case(
            "title-huge",
            202,
            mutate=_setter("pull_request", "title", value="T" * 60_000),
            accepted_without="T" * 1000,
        ),
        Case("head-repo-null-deleted-fork", 202, mutate=_setter("pull_request", "head", "repo", value=None)),
        # file:// is allowed by the event grammar (the local demo); the flow clones from PREVIEWS_GIT_URL_TEMPLATE only
        Case(
            "clone-url-file",
            202,
            mutate=_setter("pull_request", "head", "repo", "clone_url", value="file:///etc/passwd"),
        ),
    ]
    # the allow list (403)
    cases += [
        Case(
            f"not-allowed-{i}",
            403,
            "PREVIEWS_ALLOWED_REPOSITORIES",
            mutate=_setter("repository", "full_name", value=repo),
            extra_settings={"allowed_repositories": "codertocat/hello-world"},
        )
        for i, repo in enumerate(["evil/api", "Codertocat/Hello-World-2", "codertocat/hello_world"])
    ]
    cases += _delivery_id_cases()
    return cases


CASES = build_cases()
