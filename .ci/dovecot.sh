#!/usr/bin/env bash
# Install Debian's dovecot IMAP server for the email connector's tests (idempotent).
# The tests start their own dovecot with a private config on loopback; this only installs it.
set -euo pipefail

if command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "dovecot is missing and installing it needs root (or sudo)" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends dovecot-imapd >/dev/null
# The package's own service is not wanted: tests run dovecot with their own config.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now dovecot >/dev/null 2>&1 || true
fi
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]
