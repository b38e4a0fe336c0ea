"""Where alerts go: the spec's ``alerts`` list (``rowfill.spec.alert_targets``), turned into Airflow notifiers.

Using Airflow's own notifiers (``airflow.sdk.BaseNotifier``: the SMTP and Slack providers', any class a
spec names) and Airflow connections (a webhook's URL and headers) keeps credentials where operators
already manage them, instead of in YAML, which the spec refuses. Every target is tried even
if another one fails, and a failure to deliver is logged loudly but never raised: an alert that
cannot be sent must not turn a successful run into a failed one or hide the original error.
"""

from __future__ import annotations

import asyncio
import base64
import html
import importlib
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from airflow.sdk import BaseHook, BaseNotifier

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
def webhook_request(connection: str, endpoint: str | None = None) -> tuple[str, dict[str, str]]:
    """The URL and headers of a webhook, read from its Airflow HTTP connection, as the HTTP provider's
    ``HttpHook`` reads one (provider docs, "HTTP Connection"): ``host`` is the URL when it holds
    ``://``, else ``schema`` (http/https, default http) + ``host`` + ``port``; ``endpoint`` is appended;
    the extra's keys are headers; ``login``/``password`` become basic auth.

    :param connection: the Airflow connection id (``webhook: {connection: ...}``).
    :param endpoint: a path appended to the connection's URL, or None.
    :returns: (URL, headers).
    :raises AirflowNotFoundException: (from Airflow) no such connection. :raises ValueError: no host.
    """
    conn = BaseHook.get_connection(connection)
    host = (conn.host or "").strip()
    if not host:
        raise ValueError(f"Airflow connection {connection!r} has no host; set it to the webhook's URL")
    if "://" in host:
        base = host
    else:
        base = f"{conn.schema or 'http'}://{host}{f':{conn.port}' if conn.port else ''}"
    url = base.rstrip("/") + ("/" + endpoint.lstrip("/") if endpoint else "")
    headers = {str(k): str(v) for k, v in (conn.extra_dejson or {}).items()}
    if conn.login:
        token = base64.b64encode(f"{conn.login}:{conn.password or ''}".encode()).decode()
        headers.setdefault("Authorization", f"Basic {token}")
    return url, headers


class WebhookNotifier(BaseNotifier):
    """A generic HTTP webhook: POSTs the alert as JSON (``text`` first, so Slack- or Teams-style
    incoming webhooks show it as it is) and raises on any non-2xx answer."""

    template_fields = ()

    def __init__(self, connection: str, payload: dict, endpoint: str | None = None, timeout: float = 10.0):
        """:param connection: the Airflow HTTP connection holding the URL and headers (``webhook_request``).
        :param payload: the JSON body. :param endpoint: a path after the connection's URL.
        :param timeout: seconds to wait for the answer."""
        super().__init__()
        self.connection, self.payload, self.endpoint, self.timeout = connection, payload, endpoint, timeout

    def _post(self) -> int:
        url, headers = webhook_request(self.connection, self.endpoint)
        req = urllib.request.Request(url, data=json.dumps(self.payload, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "rowfill", **headers})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - the connection's own URL
            return resp.status

    def notify(self, context):
        """POST the payload; raises ``urllib.error.URLError``/``HTTPError`` on failure or a non-2xx answer."""
        self._post()

    async def async_notify(self, context):
        """``notify`` from the triggerer's event loop, in a thread so the loop is not blocked."""
        await asyncio.to_thread(self._post)


def notifier_class(path: str) -> type:
    """The notifier class a ``notifier: {class: module.path:ClassName}`` entry names (``module.path.ClassName`` too).

    :raises ImportError: the module does not import. :raises TypeError: it is not an Airflow notifier.
    """
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
        raise TypeError(f"{path} is not an Airflow notifier (a subclass of airflow.sdk.BaseNotifier)")
    return cls


def notifier_for(target: AlertTarget, alert: Alert):
    """A ready-to-call Airflow notifier for one target and one alert.

    :param target: a checked ``alerts`` entry; ``smtp`` uses the SMTP provider's ``SmtpNotifier``,
        ``slack`` the Slack provider's ``SlackNotifier`` (Airflow provider docs, "Notifications"),
        ``webhook`` rowfill's ``WebhookNotifier`` on an Airflow HTTP connection, ``notifier`` the named
        class built with the entry's ``args`` (its template fields are rendered by ``deliver``, with
        ``rowfill`` = the alert's payload in the context).
    :raises AssertionError: for a kind ``rowfill.spec.alert_targets`` does not accept (a bug, not a spec error).
    :raises ImportError: / TypeError: a ``notifier`` class that does not import or is not a notifier.
    """
    o = target.options
    if target.kind == "webhook":
        return WebhookNotifier(o["connection"], alert.payload(), o.get("endpoint"), o.get("timeout", 10.0))
    if target.kind == "notifier":
        return notifier_class(o["class"])(**o.get("args", {}))
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
            notifier = notifier_for(target, alert)
            if target.kind == "notifier":  # its args may be templates: "{{ rowfill.text }}"
                notifier.render_template_fields({**context, "rowfill": alert.payload()})
            notifier.notify(context)
        except Exception as exc:  # noqa: BLE001 - one broken target must not stop the others
            failed.append(target.describe())
            log.error("rowfill: could not send the %s alert of %s to %s: %s: %s", alert.event, alert.backfill,
                      target.describe(), type(exc).__name__, exc)
    return failed


async def adeliver(targets, alert: Alert, context: dict | None = None) -> list[str]:
    """``deliver`` from async code (triggerer: stall watchdog, deadline callbacks) without blocking its loop."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(deliver, thread_sensitive=False)(targets, alert, context)
