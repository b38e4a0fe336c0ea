"""Where alerts go: the spec's ``alerts`` list (``rowfill.spec.alert_targets``), turned into Airflow notifiers.

Using Airflow's own notifiers (``airflow.sdk.BaseNotifier``) keeps credentials in Airflow
connections, where operators already manage them, instead of in YAML. Every target is tried even
if another one fails, and a failure to deliver is logged loudly but never raised: an alert that
cannot be sent must not turn a successful run into a failed one or hide the original error.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from airflow.sdk import BaseNotifier

from rowfill.spec.alert_targets import AlertTarget

log = logging.getLogger("rowfill.alerts")


@dataclass(frozen=True)
class Alert:
    """One message about one backfill; ``details`` is the machine-readable part webhooks receive."""

    event: str
    backfill: str
    subject: str
    text: str
    details: dict = field(default_factory=dict)

    def payload(self) -> dict:
        """The JSON body a webhook receives: ``text``, ``subject``, ``event``, ``backfill`` and ``details``."""
        return {"text": self.text, "subject": self.subject, "event": self.event, "backfill": self.backfill, **self.details}


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
        """POST the payload; raises ``urllib.error.URLError``/``HTTPError`` on failure or a non-2xx answer."""
        self._post()

    async def async_notify(self, context):
        """``notify`` from the triggerer's event loop, in a thread so the loop is not blocked."""
        await asyncio.to_thread(self._post)


def notifier_for(target: AlertTarget, alert: Alert):
    """A ready-to-call Airflow notifier for one target and one alert (texts already final, no templating).

    :param target: a checked ``alerts`` entry; ``smtp`` uses the SMTP provider's ``SmtpNotifier``,
        ``slack`` the Slack provider's ``SlackNotifier`` (Airflow provider docs, "Notifications").
    :raises AssertionError: for a kind ``rowfill.spec.alert_targets`` does not accept (a bug, not a spec error).
    """
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
    """Send ``alert`` to every target that wants its event, and always to the log.

    :param targets: the spec's ``alerts`` (``AlertTarget``s).
    :param context: the Airflow context of the callback, if any (without ``dag``, see below).
    :return: ``describe()`` of each target that failed; never raises for a failed delivery.
    """
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
