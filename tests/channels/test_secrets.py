"""Bot tokens come from the environment or a private HOMESPUN_HOME/secrets.env, never the spec."""

from __future__ import annotations

import logging
import os

import pytest

from homespun.channels.secrets import RedactingFilter, SecretError, get_secret, secrets_path

NAME = "HOMESPUN_TEST_BOT_TOKEN"


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)


def write_secrets(settings, text: str, mode: int = 0o600):
    path = secrets_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_environment_wins_over_the_file(settings, monkeypatch):
    write_secrets(settings, f"{NAME}=from-file\n")
    monkeypatch.setenv(NAME, "from-env")
    assert get_secret(NAME, settings) == "from-env"


def test_read_from_a_private_file(settings):
    write_secrets(settings, f'# tokens\n\nOTHER=x\nexport {NAME}="123:abc=def"\n')
    assert get_secret(NAME, settings) == "123:abc=def"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_others_can_read_is_refused(settings, mode):
    path = write_secrets(settings, f"{NAME}=leaky\n", mode)
    with pytest.raises(SecretError) as err:
        get_secret(NAME, settings)
    assert f"chmod 600 {path}" in str(err.value)
    assert "leaky" not in str(err.value)


def test_missing_names_the_variable_and_the_file(settings):
    with pytest.raises(SecretError) as err:
        get_secret(NAME, settings)
    message = str(err.value)
    assert NAME in message and str(secrets_path(settings)) in message

    write_secrets(settings, "OTHER=x\n")  # the file exists but lacks the name
    with pytest.raises(SecretError, match=NAME):
        get_secret(NAME, settings)


def test_a_malformed_line_is_an_error_that_does_not_echo_it(settings):
    write_secrets(settings, "123456:pasted-token-without-a-name\n")
    with pytest.raises(SecretError) as err:
        get_secret(NAME, settings)
    assert ":1: expected KEY=VALUE" in str(err.value)
    assert "pasted-token" not in str(err.value)


def test_tokens_are_redacted_from_logs():
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        "POST https://api.telegram.org/bot%s/getUpdates",
        ("123:SECRET",),
        None,
    )
    RedactingFilter(["123:SECRET"]).filter(record)
    assert record.getMessage() == "POST https://api.telegram.org/bot***/getUpdates"
