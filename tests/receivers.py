"""Real receivers for alerts, started by a test on free ports: an SMTP server (aiosmtpd) and an HTTP webhook
(http.server in a thread). Each keeps what it received."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.standalone import free_port


@dataclass
class Received:
    """The e-mails and webhook bodies the receivers got, and their addresses."""

    smtp_port: int
    webhook_url: str
    mails: list[Message] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)


class _Mailbox:
    def __init__(self, received: Received) -> None:
        self.received = received

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook
        self.received.mails.append(message_from_bytes(envelope.original_content))
        return "250 OK"


@contextmanager
def alert_receivers() -> Iterator[Received]:
    """An SMTP server and a webhook answering 200, both on 127.0.0.1, stopped afterwards."""
    from aiosmtpd.controller import Controller

    received = Received(smtp_port=free_port(), webhook_url="")

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's hook
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.posts.append({"content_type": self.headers["Content-Type"], **json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    received.webhook_url = f"http://127.0.0.1:{http.server_address[1]}/hook"
    threading.Thread(target=http.serve_forever, daemon=True).start()
    smtp = Controller(_Mailbox(received), hostname="127.0.0.1", port=received.smtp_port)
    smtp.start()
    try:
        yield received
    finally:
        smtp.stop()
        http.shutdown()
        http.server_close()
