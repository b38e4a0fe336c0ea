"""The ``alerts`` field of a spec: where alerts go (``AlertTarget``) and for which events.

Values and their validation only; the Airflow notifiers that send alerts are built from these in
``rowfill.airflow.notifiers``. Each entry names one notifier; every credential stays in Airflow
(a connection, or a notifier's own connection id), never in the spec, which lives in git::

    alerts:
      - smtp: {to: [oncall@example.com], from: rowfill@example.com, connection: smtp_default}
      - webhook: {connection: rowfill_webhook, endpoint: /rowfill}   # an Airflow HTTP connection
      - slack: {connection: slack_api_default, channel: "#data-eng"}   # needs the Slack provider
      - notifier: {class: "airflow.providers.pagerduty.notifications.pagerduty:PagerdutyNotifier",
                   args: {summary: "{{ rowfill.subject }}", pagerduty_events_conn_id: pagerduty_default}}

A spec that writes a credential (an option such as ``password``, ``token``, ``headers`` or a
webhook ``url``; a URL holding ``user:password@`` or a ``token=`` query) is refused with the
connection to create instead. The Slack check asks whether the provider is installed
(``importlib.util.find_spec``) without importing it, so this module stays free of Airflow.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rowfill.spec.bounds import WEBHOOK_TIMEOUT
from rowfill.spec.durations import parse_duration

EVENTS = ("chunk_failed", "run_failed", "run_succeeded", "stalled", "still_stalled", "progressing_again", "overdue")
KINDS = ("smtp", "webhook", "slack", "notifier")
# Option names that hold a credential, in any notifier (and in a notifier class's ``args``).
_SECRET_NAME = re.compile(r"pass(word|wd)?$|secret|token|api[_-]?key|auth|credential|private[_-]?key|cookie|^dsn$", re.I)
# A URL that carries a credential: ``scheme://user:password@host`` or a key/token/signature in its query.
_SECRET_URL = re.compile(r"^[a-z][a-z0-9+.\-]*://[^/\s@]*:[^/\s@]*@|[?&](token|key|api[_-]?key|sig|signature|secret|"
                         r"password|access_token|auth)=", re.I)
_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*[:.][A-Za-z_][A-Za-z0-9_]*")
_WEBHOOK_CONNECTION = ("airflow connections add rowfill_webhook --conn-type http --conn-host 'https://hooks.example.com/rowfill' "
                       "--conn-extra '{\"X-Token\": \"...\"}'")


@dataclass(frozen=True)
class AlertTarget:
    """One notifier of the ``alerts`` field: its kind (``KINDS``), its checked options, its events.

    ``options`` keep the spec's keys (``_OPTIONS``): ``to`` is always a list, a webhook's ``timeout``
    seconds (a float, default 10), a notifier's ``args`` a mapping (default empty).
    """

    kind: str
    options: Mapping[str, Any]
    events: tuple[str, ...] = EVENTS

    def describe(self) -> str:
        """The target in a few words for logs: ``webhook https://...``, ``smtp ['oncall@...']``."""
        o = self.options
        where = o.get("class") or o.get("connection") or o.get("to") or o.get("channel") or ""
        return f"{self.kind} {where}".strip()


_OPTIONS = {
    "smtp": {"to": True, "from": False, "connection": False, "cc": False, "bcc": False, "events": False},
    "webhook": {"connection": True, "endpoint": False, "timeout": False, "events": False},
    "slack": {"connection": False, "channel": False, "events": False},
    "notifier": {"class": True, "args": False, "events": False},
}


def _secret_problem(i: int, kind: str, key: str, value: Any) -> str | None:
    """Why an option (``key``: ``value``) of entry ``i`` is a credential written in the spec, with what to
    do instead; None when it is not one."""
    if kind == "webhook" and key in ("url", "headers"):
        return (f"entry {i} (webhook): {key!r} is not accepted: a webhook's URL and headers carry its token, and "
                f"the spec lives in git. Put them in an Airflow HTTP connection (host: the URL; extra: the headers; "
                f"login/password: basic auth), e.g. {_WEBHOOK_CONNECTION}, then write "
                "{webhook: {connection: rowfill_webhook}}")
    where = {"smtp": "the SMTP connection (smtp_default, or the one named by `connection`)",
             "slack": "the Slack connection (slack_api_default, or the one named by `connection`)",
             "webhook": "the webhook's Airflow HTTP connection (`connection`)",
             "notifier": "an Airflow connection, and pass the notifier its connection id in `args`"}[kind]
    if _SECRET_NAME.search(str(key)):
        return (f"entry {i} ({kind}): {key!r} would write a credential into the spec, which lives in git; "
                f"keep it in {where}")
    if isinstance(value, str) and _SECRET_URL.search(value):
        return (f"entry {i} ({kind}): option {key!r} holds a URL with a credential in it; keep the URL in {where}")
    return None


def _check_secrets(i: int, kind: str, options: Mapping[str, Any]) -> None:
    """Refuse credentials written in an entry's options (and in a notifier's ``args``); raises ValueError."""
    found = [(key, value) for key, value in options.items() if key != "args"]
    if kind == "notifier" and isinstance(options.get("args"), dict):
        found += list(options["args"].items())
    for key, value in found:
        if problem := _secret_problem(i, kind, key, value):
            raise ValueError(problem)


def parse_alerts(value: Any) -> tuple[AlertTarget, ...]:
    """The ``alerts`` field.

    :param value: a list of one-key mappings, ``{smtp|webhook|slack|notifier: {options}}``.
    :return: one target per entry, in order.
    :raises ValueError: with what to write instead, naming the entry by position: a credential written
        in the spec (with the Airflow connection to create), an unknown notifier, option or event, a
        missing required option, or ``slack`` without the Slack provider installed.
    """
    example = "e.g. alerts: [{smtp: {to: oncall@example.com}}, {webhook: {connection: rowfill_webhook}}]"
    if not isinstance(value, list):
        raise ValueError(f"expected a list of notifiers, {example}")
    targets = []
    for i, entry in enumerate(value, 1):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"entry {i}: expected one notifier with its options, {example}")
        [(kind, options)] = entry.items()
        if kind not in KINDS:
            raise ValueError(f"entry {i}: unknown notifier {kind!r}; use one of {', '.join(KINDS)}")
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise ValueError(f"entry {i} ({kind}): expected a mapping of options, {example}")
        allowed = _OPTIONS[kind]
        _check_secrets(i, kind, options)
        for key in options:
            if key not in allowed:
                raise ValueError(f"entry {i} ({kind}): unknown option {key!r}; known: {', '.join(allowed)}")
        for key, required in allowed.items():
            if required and not options.get(key):
                raise ValueError(f"entry {i} ({kind}): option {key!r} is required")
        events = options.get("events", list(EVENTS))
        if isinstance(events, str):
            events = [events]
        if not isinstance(events, list) or not events or any(e not in EVENTS for e in events):
            raise ValueError(f"entry {i} ({kind}): events must be a list of {', '.join(EVENTS)}")
        opts = {k: v for k, v in options.items() if k != "events"}
        if kind == "smtp":
            to = opts["to"]
            if isinstance(to, str):
                opts["to"] = [to]
            elif not (isinstance(to, list) and to and all(isinstance(t, str) and "@" in t for t in to)):
                raise ValueError(f"entry {i} (smtp): 'to' must be an address or a list of addresses")
        for key in ("connection", "endpoint", "channel"):
            if key in opts and not isinstance(opts[key], str):
                raise ValueError(f"entry {i} ({kind}): {key!r} must be text")
        if kind == "notifier":
            if not isinstance(opts["class"], str) or not _CLASS.fullmatch(opts["class"]):
                raise ValueError(f"entry {i} (notifier): 'class' must name an Airflow notifier class as "
                                 "module.path:ClassName, e.g. airflow.providers.smtp.notifications.smtp:SmtpNotifier")
            if not isinstance(opts.setdefault("args", {}), dict):
                raise ValueError(f"entry {i} (notifier): 'args' must map the notifier's arguments to values; "
                                 "'{{ rowfill.text }}' and '{{ rowfill.subject }}' are the alert's texts")
        if kind == "webhook":
            try:
                opts["timeout"] = parse_duration(opts.get("timeout", 10), WEBHOOK_TIMEOUT)
            except ValueError as exc:
                raise ValueError(f"entry {i} (webhook): timeout: {exc}") from None
        if kind == "slack" and importlib.util.find_spec("airflow.providers.slack") is None:
            raise ValueError(
                f"entry {i}: the slack notifier needs the Slack provider, which is not installed here "
                "(pip install apache-airflow-providers-slack, then add a Slack connection); or send to a Slack "
                "incoming webhook through an Airflow HTTP connection whose host is the hook's URL: "
                "{webhook: {connection: slack_hook}}, which needs nothing")
        targets.append(AlertTarget(kind, opts, tuple(events)))
    return tuple(targets)
