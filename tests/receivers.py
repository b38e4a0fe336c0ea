"""Real local receivers for alerts and metrics: an SMTP server (aiosmtpd), an HTTP webhook endpoint
and a StatsD UDP listener, all on loopback, each recording exactly what arrived."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP line at INFO

from rowfill_dev.localpg import free_port


class Mailbox:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        with self._lock:
            self.messages.append(msg)
        return "250 OK"

    def bodies(self) -> list[str]:
        out = []
        for m in list(self.messages):
            part = m.get_body(preferencelist=("html", "plain"))
            out.append(part.get_content() if part else "")
        return out

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in list(self.messages)]


class SmtpReceiver:
    def __init__(self):
        self.port = free_port()
        self.mailbox = Mailbox()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    def connection(self, sender: str = "rowfill@example.com") -> str:
        """An Airflow connection (JSON form) for this server: plain SMTP, no TLS, no login."""
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
                           "extra": {"disable_ssl": True, "disable_tls": True, "from_email": sender, "timeout": 10,
                                     "retry_limit": 1}})


class WebhookReceiver:
    def __init__(self, status: int = 200):
        self.port = free_port()
        self.received: list[dict] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[str]:
        return [r["json"]["event"] for r in list(self.received)]

    def of(self, event: str) -> list[dict]:
        return [r["json"] for r in list(self.received) if r["json"]["event"] == event]


class StatsdReceiver:
    """Collects raw StatsD datagrams (``name:value|type``) sent to a loopback UDP port."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.packets: list[str] = []
        self._stop = False

    def __enter__(self):
        self.sock.settimeout(0.2)
        threading.Thread(target=self._loop, daemon=True).start()
        return self

    def _loop(self):
        while not self._stop:
            try:
                data, _ = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            self.packets.extend(data.decode().splitlines())

    def __exit__(self, *exc):
        self._stop = True
        time.sleep(0.3)
        self.sock.close()

    def values(self, name: str, kind: str) -> list[float]:
        """Values of one metric (``kind``: c counter, ms timer, g gauge), in arrival order."""
        out = []
        for p in list(self.packets):
            metric, _, rest = p.partition(":")
            value, _, typ = rest.partition("|")
            if metric == name and typ.split("|")[0] == kind:
                out.append(float(value))
        return out

