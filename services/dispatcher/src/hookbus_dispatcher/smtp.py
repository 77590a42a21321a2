"""Email notifications: one message through an SMTP server, with STARTTLS or implicit TLS.

What the server answers decides what happens next, as a status does for HTTP: a 5xx reply
(a refused sender, recipient or login) will be refused again and is final; a 4xx reply, a
timeout or a connection that fails is tried again on the schedule.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
import msgspec

from .config import Smtp


class Sent(msgspec.Struct, frozen=True, kw_only=True):
    """How sending went: ``error`` is None when the server took the message; ``final``
    when trying again cannot help; ``reply`` the server's last words, for diagnosis."""

    error: str | None = None
    final: bool = False
    reply: str | None = None


def message(
    *, sender: str, to: list[str], subject: str, body: str, message_id: str
) -> EmailMessage:
    """The email; its Message-ID is the delivery's message id (the same on every attempt
    and replay), so a receiver's mail system can recognise a repeat."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    # A header cannot hold a line break: a subject rendered over several lines is joined.
    msg["Subject"] = " ".join(subject.split())[:900]
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{message_id}@hookbus>"
    msg["X-Hookbus-Delivery"] = message_id
    msg.set_content(body)
    return msg


def _tls_context(smtp: Smtp) -> ssl.SSLContext | None:
    if smtp.ca_file is None:
        return None
    return ssl.create_default_context(cafile=smtp.ca_file)


async def send(smtp: Smtp, msg: EmailMessage, seconds: float) -> Sent:
    """Send ``msg`` once; never raises for what the server or the network does."""
    password = smtp.password.value if smtp.password is not None else None
    try:
        _, reply = await aiosmtplib.send(
            msg,
            hostname=smtp.host,
            port=smtp.port_or_default(),
            username=smtp.username,
            password=password,
            use_tls=smtp.tls == "implicit",
            start_tls=smtp.tls == "starttls",
            tls_context=_tls_context(smtp),
            timeout=seconds,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = sorted({e.code for e in exc.recipients})
        final = all(code >= 500 for code in codes)
        return Sent(error=f"SMTP recipients refused ({', '.join(map(str, codes))})", final=final)
    except aiosmtplib.SMTPResponseException as exc:
        what = f"SMTP {exc.code} {exc.message}"[:500]
        return Sent(error=what, final=exc.code >= 500, reply=exc.message[:4096])
    except (aiosmtplib.SMTPException, OSError) as exc:
        # Connection refused or lost, a timeout, a TLS handshake that failed: try again.
        return Sent(error=f"{type(exc).__name__}: {exc}"[:500])
    return Sent(reply=reply[:4096])
