"""The email connector against a real IMAP server (dovecot on loopback, see conftest.py)."""

from __future__ import annotations

import imaplib
import re

import pytest

from homespun.connectors.email import (
    DESCRIPTIONS,
    ImapAccount,
    ReadOnlyViolation,
    create_email_server,
    open_read_only,
)
from homespun.connectors.registry import ConnectorConfigError
from tests.mcp_helpers import assert_descriptions, call, list_tools, open_builtin, refused

from .conftest import ImapServer

pytestmark = pytest.mark.slow  # starts a dovecot subprocess

WHERE = "tools.servers[0].options"
PASSWORD_ENV = "HS_TEST_IMAP_PASSWORD"


@pytest.fixture
def options(imap_server: ImapServer, monkeypatch) -> dict:
    monkeypatch.setenv(PASSWORD_ENV, imap_server.password)
    return {
        "host": imap_server.host,
        "port": imap_server.port,
        "username": imap_server.username,
        "password_env": PASSWORD_ENV,
        "ssl": False,
    }


@pytest.fixture
def server(options, settings):
    return create_email_server(options, where=WHERE, settings=settings)


def mailbox_state(imap: ImapServer) -> dict[str, tuple[int, frozenset[str]]]:
    """Subject -> (uid, flags), read over a separate plain imaplib connection."""
    conn = imaplib.IMAP4(imap.host, imap.port)
    try:
        conn.login(imap.username, imap.password)
        conn.select("INBOX", readonly=True)
        typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
    finally:
        conn.logout()
    state = {}
    for part in data:
        if isinstance(part, tuple):
            meta = part[0].decode()
            subject = part[1].decode().split(":", 1)[1].strip()
            uid = int(re.search(r"UID (\d+)", meta).group(1))
            flags = frozenset(re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split())
            state[subject] = (uid, flags)
    return state


async def test_list_search_and_read_leave_every_flag_as_it_was(server, imap_server):
    before = mailbox_state(imap_server)
    assert set(before) == {"Lunch on Friday", "Your invoice for March", "Dentist reminder"}
    dentist_uid, dentist_flags = before["Dentist reminder"]
    invoice_uid, _ = before["Your invoice for March"]
    assert "\\Seen" not in dentist_flags  # the unread one
    assert "\\Seen" in before["Lunch on Friday"][1]

    listing = (await call(server, "list_messages")).splitlines()
    assert len(listing) == 3
    assert listing[0] == (
        f"uid {dentist_uid} · 2025-03-05 16:45 · Dr Bob Smile "
        "<reception@smile-dental.example> · Dentist reminder · unread"
    )
    assert sum("unread" in line for line in listing) == 1
    unread = await call(server, "list_messages", unread_only=True)
    assert unread.count("\n") == 0 and "Dentist reminder" in unread
    assert (await call(server, "list_messages", limit=1)) == listing[0]

    invoice = await call(server, "search_messages", query="invoice")
    assert invoice.startswith(f"uid {invoice_uid} · ") and invoice.count("\n") == 0
    assert "Lunch on Friday" in await call(server, "search_messages", query="pizza")  # body
    accented = await call(server, "search_messages", query="café")  # UTF-8, as a literal
    assert "Lunch on Friday" in accented and accented.count("\n") == 0
    lunch = await call(server, "read_message", uid=before["Lunch on Friday"][0])
    assert lunch.splitlines()[0] == f"uid {before['Lunch on Friday'][0]} in INBOX"  # read
    assert "pizza at Luigi's café on Friday" in lunch
    assert "Dentist" in await call(server, "search_messages", query="smile-dental")  # sender
    assert "No messages match" in await call(server, "search_messages", query="zebra")
    assert "No messages match" in await call(server, "search_messages", query='x" OR ALL')

    reminder = await call(server, "read_message", uid=dentist_uid)
    assert reminder.startswith(f"uid {dentist_uid} in INBOX (unread)\n")
    assert "Subject: Dentist reminder" in reminder
    assert "Your check-up is on 12 March at 14:00." in reminder
    assert "alert" not in reminder and "color" not in reminder and "<p>" not in reminder

    bill = await call(server, "read_message", uid=invoice_uid)
    assert "Attachments: invoice-2025-03.pdf (application/pdf)" in bill
    assert "84.20 EUR, due on 31 March" in bill  # text/plain preferred to the HTML part
    assert "JVBERi0" not in bill  # attachments are listed, never dumped

    assert "No message with uid 999" in await refused(server, "read_message", uid=999)
    assert mailbox_state(imap_server) == before  # nothing read changed a flag


async def test_no_tool_writes_and_the_connection_refuses_writes(server, options, imap_server):
    tools = list((await list_tools(server)).values())
    assert {t.name for t in tools} == {"list_messages", "search_messages", "read_message"}
    assert all(t.annotations.readOnlyHint and not t.annotations.destructiveHint for t in tools)

    before = mailbox_state(imap_server)
    uid = str(before["Dentist reminder"][0])
    account = ImapAccount(
        host=options["host"],
        port=options["port"],
        username=options["username"],
        password_env=PASSWORD_ENV,
        use_ssl=False,
        starttls=False,
        mailbox="INBOX",
        timeout=10,
    )
    conn = open_read_only(account)
    try:
        attempts = [
            lambda: conn.uid("STORE", uid, "+FLAGS", "(\\Seen)"),
            lambda: conn.store("1", "+FLAGS", "(\\Deleted)"),
            lambda: conn.uid("COPY", uid, "Trash"),
            lambda: conn.uid("MOVE", uid, "Trash"),
            lambda: conn.expunge(),
            lambda: conn.append("INBOX", None, None, b"Subject: x\r\n\r\nx"),
            lambda: conn.create("Spam"),
            lambda: conn.delete("INBOX"),
            lambda: conn.select("INBOX"),  # SELECT (read-write), not EXAMINE
            lambda: conn.uid("FETCH", uid, "(BODY[])"),  # would set \Seen
            lambda: conn.fetch("1", "(RFC822)"),
        ]
        for attempt in attempts:
            with pytest.raises(ReadOnlyViolation):
                attempt()
        typ, _ = conn.uid("FETCH", uid, "(FLAGS BODY.PEEK[HEADER])")
        assert typ == "OK"  # the connection still works for reading
    finally:
        conn.logout()
    assert mailbox_state(imap_server) == before


async def test_a_wrong_password_is_a_clear_error_without_the_password(
    options, settings, monkeypatch
):
    monkeypatch.setenv(PASSWORD_ENV, "wrong-pass-123")
    server = create_email_server(options, where=WHERE, settings=settings)
    message = await refused(server, "list_messages")
    assert "refused the login of alice@127.0.0.1" in message
    assert "wrong-pass-123" not in message


async def test_an_unreachable_server_is_a_clear_error(options, settings):
    closed = dict(options, port=1)
    message = await refused(
        create_email_server(closed, where=WHERE, settings=settings), "list_messages"
    )
    assert "Could not connect to the mail server 127.0.0.1:1" in message


def test_option_errors_name_the_field(settings, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "x")
    base = {"host": "imap.example.com", "username": "a", "password_env": PASSWORD_ENV}

    def error(**changes) -> str:
        opts = {k: v for k, v in {**base, **changes}.items() if v is not None}
        with pytest.raises(ConnectorConfigError) as info:
            create_email_server(opts, where=WHERE, settings=settings)
        return str(info.value)

    assert error(host=None) == f"{WHERE}.host: is required"
    assert error(password="hunter2").startswith(f"{WHERE}.password: passwords never live")
    assert error(password_env="NOT_SET_HS_VAR").startswith(
        f"{WHERE}.password_env: the environment variable NOT_SET_HS_VAR is not set"
    )
    assert error(password_env="my password!").startswith(f"{WHERE}.password_env: must be the NAME")
    assert error(ssl=False).startswith(f"{WHERE}.ssl: false without starttls would send")
    assert error(ssl=True, starttls=True).startswith(f"{WHERE}.starttls:")
    assert error(port=70000).startswith(f"{WHERE}.port: must be at most 65535")
    assert error(port="993").startswith(f"{WHERE}.port: must be a whole number")
    assert error(folder="INBOX").startswith(f"{WHERE}.folder: unknown option")
    # starttls, or plaintext that is explicitly allowed, are accepted
    create_email_server({**base, "ssl": False, "starttls": True}, where=WHERE, settings=settings)
    create_email_server(
        {**base, "ssl": False, "allow_plaintext": True}, where=WHERE, settings=settings
    )


async def test_loads_through_the_spec_with_a_description_override(options, settings, imap_server):
    overrides = {"list_messages": "Show the newest mail."}
    async with open_builtin(
        settings, "mail", "email", options=options, sensitive=True, descriptions=overrides
    ) as loaded:
        tools = loaded.by_name()
        assert set(tools) == {"list_messages", "search_messages", "read_message"}
        assert tools["list_messages"].description == "Show the newest mail."
        assert_descriptions(tools, DESCRIPTIONS, overrides)
        assert loaded.sensitive_servers == {"mail"}
        result = await tools["list_messages"].ainvoke({"unread_only": True})
        assert "Dentist reminder" in str(result)
