"""Where alerts go: the spec's ``alerts`` list, turned into Airflow notifiers.

Each entry names one Airflow notifier and its options::

    alerts:
      - smtp: {to: [oncall@example.com], from: rowfill@example.com, connection: smtp_default}
      - webhook: {url: "https://hooks.example.com/rowfill", headers: {X-Token: abc}}
      - slack: {connection: slack_api_default, channel: "#data-eng"}   # needs the Slack provider

Using Airflow's own notifiers (``airflow.sdk.BaseNotifier``) keeps credentials in Airflow
connections, where operators already manage them, instead of in YAML. Every target is tried even
if another one fails, and a failure to deliver is logged loudly but never raised: an alert that
cannot be sent must not turn a successful run into a failed one or hide the original error.
"""

from __future__ import annotations

import asyncio
import html
import importlib.util
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseNotifier

from rowfill.bounds import WEBHOOK_TIMEOUT
from rowfill.durations import parse_duration

log = logging.getLogger("rowfill.alerts")

EVENTS = ("chunk_failed", "run_failed", "run_succeeded", "stalled", "still_stalled", "progressing_again", "overdue")
KINDS = ("smtp", "webhook", "slack")


@dataclass(frozen=True)
class Alert:
    """One message about one backfill; ``details`` is the machine-readable part webhooks receive."""

    event: str
    backfill: str
    subject: str
    text: str
    details: dict = field(default_factory=dict)

    def payload(self) -> dict:
        return {"text": self.text, "subject": self.subject, "event": self.event, "backfill": self.backfill, **self.details}


@dataclass(frozen=True)
class AlertTarget:
    kind: str
    options: dict
    events: tuple[str, ...] = EVENTS

    def describe(self) -> str:
        where = self.options.get("url") or self.options.get("to") or self.options.get("channel") or ""
        return f"{self.kind} {where}".strip()


# -- spec validation -----------------------------------------------------------------------------
_OPTIONS = {
    "smtp": {"to": True, "from": False, "connection": False, "cc": False, "bcc": False, "events": False},
    "webhook": {"url": True, "headers": False, "timeout": False, "events": False},
    "slack": {"connection": False, "channel": False, "events": False},
}


def parse_alerts(value: Any) -> tuple[AlertTarget, ...]:
    """The ``alerts`` field, or ValueError with what to write instead."""
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


# -- notifiers -----------------------------------------------------------------------------------
class WebhookNotifier(BaseNotifier):
    """A generic HTTP webhook: POSTs the alert as JSON (``text`` first, so Slack- or Teams-style
    incoming webhooks show it as it is) and raises on any non-2xx answer."""

    template_fields = ()

    def __init__(self, url: str, payload: dict, headers: dict | None = None, timeout: float = 10.0):
        super().__init__()
        self.url, self.payload, self.headers, self.timeout = url, payload, headers or {}, timeout

    def _post(self) -> int:
        req = urllib.request.Request(self.url, data=json.dumps(self.payload, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "rowfill", **self.headers})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - the spec's own URL
            return resp.status

    def notify(self, context):
        self._post()

    async def async_notify(self, context):
        await asyncio.to_thread(self._post)


def notifier_for(target: AlertTarget, alert: Alert):
    """A ready-to-call Airflow notifier for one target and one alert (texts already final, no templating)."""
    o = target.options
    if target.kind == "webhook":
        return WebhookNotifier(o["url"], alert.payload(), o.get("headers"), o.get("timeout", 10.0))
    if target.kind == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        body = f"<pre style='font-family:sans-serif;white-space:pre-wrap'>{html.escape(alert.text)}</pre>"
        return SmtpNotifier(to=o["to"], from_email=o.get("from"), subject=alert.subject, html_content=body,
                            cc=o.get("cc"), bcc=o.get("bcc"), smtp_conn_id=o.get("connection"))
    if target.kind == "slack":
        from airflow.providers.slack.notifications.slack import SlackNotifier

        kwargs = {"text": alert.text}
        if o.get("connection"):
            kwargs["slack_conn_id"] = o["connection"]
        if o.get("channel"):
            kwargs["channel"] = o["channel"]
        return SlackNotifier(**kwargs)
    raise AssertionError(target.kind)


def deliver(targets, alert: Alert, context: dict | None = None) -> list[str]:
    """Send ``alert`` to every target that wants its event; returns the targets that failed."""
    (log.info if alert.event in ("run_succeeded", "progressing_again") else log.error)("%s", alert.text)
    # Texts are final; without the DAG a notifier that renders a default (the SMTP sender from its
    # connection) uses a plain Jinja environment, which also works where the DAG is a serialized one.
    context = {k: v for k, v in (context or {}).items() if k != "dag"}
    failed = []
    for target in targets:
        if alert.event not in target.events:
            continue
        try:
            notifier_for(target, alert).notify(context)
        except Exception as exc:  # noqa: BLE001 - one broken target must not stop the others
            failed.append(target.describe())
            log.error("rowfill: could not send the %s alert of %s to %s: %s: %s", alert.event, alert.backfill,
                      target.describe(), type(exc).__name__, exc)
    return failed


async def adeliver(targets, alert: Alert, context: dict | None = None) -> list[str]:
    """``deliver`` from async code (triggerer: stall watchdog, deadline callbacks) without blocking its loop."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(deliver, thread_sensitive=False)(targets, alert, context)
