"""A real IMAP server for the email connector: Debian's dovecot on loopback, private config.

The server runs from a temporary folder with its own config, sockets, state and Maildir;
nothing under /etc or /var is used. If dovecot is not installed, `.ci/dovecot.sh` installs it
(apt-get); if that is impossible the tests fail, they are never skipped.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / ".ci" / "dovecot.sh"

IMAP_USER = "alice"
IMAP_PASSWORD = "s3cret-for-tests"


@dataclass(frozen=True)
class ImapServer:
    host: str
    port: int
    username: str
    password: str
    maildir: Path


def _dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)),
        None,
    )


def _ensure_dovecot() -> str:
    found = _dovecot_binary()
    if found:
        return found
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600
    )
    found = _dovecot_binary()
    if proc.returncode != 0 or not found:
        pytest.fail(
            "The email connector is tested against a real IMAP server (dovecot), which is not "
            f"installed and could not be installed by {INSTALL_SCRIPT.relative_to(REPO)} "
            f"(exit {proc.returncode}; apt-get needs root and network). Install the Debian "
            "package dovecot-imapd and run the tests again.\n"
            f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}",
            pytrace=False,
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.match(r"(\d+)\.(\d+)", out.strip())
    return (int(match.group(1)), int(match.group(2))) if match else (2, 3)


def _config(
    version: tuple[int, int],
    base: Path,
    port: int,
    mail_uid: int,
    mail_gid: int,
    internal_user: str,
    login_user: str,
) -> str:
    mail = base / "mail"
    common = f"""
protocols = imap
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
instance_name = homespun-test-{port}
log_path = {base}/dovecot.log
ssl = no
auth_mechanisms = plain login
default_internal_user = {internal_user}
default_login_user = {login_user}
first_valid_uid = {min(mail_uid, 500)}
first_valid_gid = {min(mail_gid, 500)}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
    if not os.geteuid() == 0:  # chroot needs root
        common += "service imap-login {\n  chroot =\n}\nservice anvil {\n  chroot =\n}\n"
    if version >= (2, 4):
        return f"""dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
{common}
auth_allow_cleartext = yes
mail_uid = {mail_uid}
mail_gid = {mail_gid}
mail_driver = maildir
mail_home = {mail}/%{{user}}
mail_path = {mail}/%{{user}}
namespace inbox {{
  inbox = yes
}}
passdb passwd-file {{
  passwd_file_path = {base}/users
  default_password_scheme = PLAIN
}}
userdb static {{
  fields {{
    uid = {mail_uid}
    gid = {mail_gid}
    home = {mail}/%{{user}}
  }}
}}
"""
    return f"""{common}
disable_plaintext_auth = no
mail_location = maildir:{mail}/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={mail}/%u
}}
"""


# --------------------------------------------------------------------------- test mail

LUNCH = b"""\
From: Alice Martin <alice.martin@example.org>
To: alice@example.org
Subject: Lunch on Friday
Date: Mon, 03 Mar 2025 10:00:00 +0000
Message-ID: <lunch-1@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Shall we get pizza at Luigi's caf\xc3\xa9 on Friday at noon?
"""

INVOICE = b"""\
From: Billing <billing@power.example.com>
To: alice@example.org
Subject: Your invoice for March
Date: Tue, 04 Mar 2025 08:30:00 +0000
Message-ID: <invoice-3@power.example.com>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain; charset=utf-8

Your electricity invoice for March is 84.20 EUR, due on 31 March.

--inner
Content-Type: text/html; charset=utf-8

<html><body><p>Your <b>electricity</b> invoice for March is 84.20 EUR.</p></body></html>

--inner--

--outer
Content-Type: application/pdf; name="invoice-2025-03.pdf"
Content-Disposition: attachment; filename="invoice-2025-03.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoKdHJhaWxlcgo8PD4+CiUlRU9G

--outer--
"""

DENTIST = b"""\
From: Dr Bob Smile <reception@smile-dental.example>
To: alice@example.org
Subject: Dentist reminder
Date: Wed, 05 Mar 2025 16:45:00 +0000
Message-ID: <reminder-9@smile-dental.example>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><head><style>p { color: red }</style><script>alert('x')</script></head>
<body><p>Your check-up is on <b>12 March at 14:00</b>.</p><p>Reply to confirm.</p></body></html>
"""

# (Maildir folder, file name, content): two read messages in cur/, one unread in new/
MESSAGES = (
    ("cur", "1741000000.M1P100.homespun:2,S", LUNCH),
    ("cur", "1741000001.M2P100.homespun:2,S", INVOICE),
    ("new", "1741000002.M3P100.homespun", DENTIST),
)


def _deliver(maildir: Path, uid: int, gid: int) -> None:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for folder, name, content in MESSAGES:
        (maildir / folder / name).write_bytes(content.replace(b"\n", b"\r\n"))
    if os.geteuid() == 0:
        for path in [maildir.parent, maildir, *maildir.rglob("*")]:
            os.chown(path, uid, gid)


def _wait_for_port(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(100).startswith(b"* OK"):
                    return
        except OSError:
            time.sleep(0.1)
    output = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
    pytest.fail(
        f"dovecot did not start on 127.0.0.1:{port} (exit {proc.poll()}).\n"
        f"output: {output}\nlog: {log.read_text() if log.exists() else '(none)'}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def imap_server() -> Iterator[ImapServer]:
    """dovecot on a free loopback port with user alice and three messages (one unread)."""
    binary = _ensure_dovecot()
    # short path under /tmp: dovecot's unix sockets live in base_dir (108-byte limit)
    base = Path(tempfile.mkdtemp(prefix="hs-dovecot-"))
    proc: subprocess.Popen | None = None
    try:
        os.chmod(base, 0o755)  # the mail user must reach its Maildir
        if os.geteuid() == 0:
            # dovecot never serves mail as root: the mailbox belongs to an unprivileged user
            nobody = pwd.getpwnam("nobody")
            mail_uid, mail_gid = nobody.pw_uid, nobody.pw_gid
            internal_user = "root"
            login_user = next((u for u in ("dovenull", "nobody") if _user_exists(u)), "nobody")
        else:
            mail_uid, mail_gid = os.getuid(), os.getgid()
            internal_user = login_user = pwd.getpwuid(os.getuid()).pw_name
        (base / "users").write_text(f"{IMAP_USER}:{{PLAIN}}{IMAP_PASSWORD}::::::\n")
        os.chmod(base / "users", 0o600)
        maildir = base / "mail" / IMAP_USER
        _deliver(maildir, mail_uid, mail_gid)
        port = _free_port()
        config = base / "dovecot.conf"
        config.write_text(
            _config(_version(binary), base, port, mail_uid, mail_gid, internal_user, login_user)
        )
        proc = subprocess.Popen(
            [binary, "-F", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _wait_for_port(proc, port, base / "dovecot.log")
        yield ImapServer(
            host="127.0.0.1", port=port, username=IMAP_USER, password=IMAP_PASSWORD, maildir=maildir
        )
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
