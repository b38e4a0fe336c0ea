"""The ``alerts`` field of a spec: where alerts go (``AlertTarget``) and for which events.

Values and their validation only; the Airflow notifiers that send alerts are built from these in
``rowfill.airflow.notifiers``. Each entry names one notifier and its options::

    alerts:
      - smtp: {to: [oncall@example.com], from: rowfill@example.com, connection: smtp_default}
      - webhook: {url: "https://hooks.example.com/rowfill", headers: {X-Token: abc}}
      - slack: {connection: slack_api_default, channel: "#data-eng"}   # needs the Slack provider

The Slack check asks whether the provider is installed (``importlib.util.find_spec``) without
importing it, so this module stays free of Airflow.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rowfill.spec.bounds import WEBHOOK_TIMEOUT
from rowfill.spec.durations import parse_duration

EVENTS = ("chunk_failed", "run_failed", "run_succeeded", "stalled", "still_stalled", "progressing_again", "overdue")
KINDS = ("smtp", "webhook", "slack")


@dataclass(frozen=True)
class AlertTarget:
    """One notifier of the ``alerts`` field: its kind (``KINDS``), its checked options, its events.

    ``options`` keep the spec's keys (``_OPTIONS``): ``to`` is always a list, a webhook's ``timeout``
    seconds (a float, default 10).
    """

    kind: str
    options: Mapping[str, Any]
    events: tuple[str, ...] = EVENTS

    def describe(self) -> str:
        """The target in a few words for logs: ``webhook https://...``, ``smtp ['oncall@...']``."""
        where = self.options.get("url") or self.options.get("to") or self.options.get("channel") or ""
        return f"{self.kind} {where}".strip()


_OPTIONS = {
    "smtp": {"to": True, "from": False, "connection": False, "cc": False, "bcc": False, "events": False},
    "webhook": {"url": True, "headers": False, "timeout": False, "events": False},
    "slack": {"connection": False, "channel": False, "events": False},
}


def parse_alerts(value: Any) -> tuple[AlertTarget, ...]:
    """The ``alerts`` field.

    :param value: a list of one-key mappings, ``{smtp|webhook|slack: {options}}``.
    :return: one target per entry, in order.
    :raises ValueError: with what to write instead, naming the entry by position: an unknown notifier,
        option or event, a missing required option, or ``slack`` without the Slack provider installed.
    """
    example = "e.g. alerts: [{smtp: {to: oncall@example.com}}, {webhook: {url: 'https://...'}}]"
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
        if kind == "webhook":
            url = opts["url"]
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"entry {i} (webhook): 'url' must start with http:// or https://")
            if "headers" in opts and not (isinstance(opts["headers"], dict)
                                          and all(isinstance(v, str) for v in opts["headers"].values())):
                raise ValueError(f"entry {i} (webhook): 'headers' must map header names to text")
            try:
                opts["timeout"] = parse_duration(opts.get("timeout", 10), WEBHOOK_TIMEOUT)
            except ValueError as exc:
                raise ValueError(f"entry {i} (webhook): timeout: {exc}") from None
        if kind == "slack" and importlib.util.find_spec("airflow.providers.slack") is None:
            raise ValueError(
                f"entry {i}: the slack notifier needs the Slack provider, which is not installed here "
                "(pip install apache-airflow-providers-slack, then add a Slack connection); or send to a Slack "
                "incoming webhook with {webhook: {url: 'https://hooks.slack.com/services/...'}}, which needs nothing")
        targets.append(AlertTarget(kind, opts, tuple(events)))
    return tuple(targets)
