"""The API's token from a file, a command or (in tests/integration/test_real_airflow.py)
Airflow's secrets backend: each mistake is one line that never shows the token."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from airflow_sentinel.api.token import load_api_token
from airflow_sentinel.config import Settings, load_settings
from airflow_sentinel.errors import ConfigError, UserError

TOKEN = "a-token-long-enough-here"


@pytest.mark.parametrize(
    ("mode", "text", "words"),
    [
        (0o644, TOKEN, "readable by others (mode 644); chmod 600"),
        (0o600, "short", "16 characters or more"),
    ],
)
def test_a_token_file_others_can_read_or_too_short_is_refused(
    settings: Settings, tmp_path: Path, mode: int, text: str, words: str
) -> None:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    with pytest.raises(UserError, match=re.escape(words)) as raised:
        load_api_token(replace(settings, api_token_file=str(path)))
    assert text not in str(raised.value)
    assert load_api_token(settings) == b""
    with pytest.raises(UserError, match="cannot read"):
        load_api_token(replace(settings, api_token_file=str(tmp_path / "missing")))
    path.chmod(0o600)
    path.write_text(f"{TOKEN}\n")
    assert load_api_token(replace(settings, api_token_file=str(path))) == TOKEN.encode()


def test_a_token_from_a_command_as_airflows_cmd_options(settings: Settings) -> None:
    assert load_api_token(replace(settings, api_token_cmd=f"echo {TOKEN}")) == TOKEN.encode()
    with pytest.raises(UserError, match="api_token_cmd: the command exited with code 1"):
        load_api_token(replace(settings, api_token_cmd="false"))
    with pytest.raises(UserError, match="api_token_cmd: the token must be 16") as raised:
        load_api_token(replace(settings, api_token_cmd="echo hush-hush"))
    assert "hush-hush" not in str(raised.value)


def test_the_token_is_given_one_way_only(tmp_path: Path) -> None:
    flags = {
        "node_id": "a",
        "metastore": f"sqlite:///{tmp_path / 'm.db'}",
        "api_token_file": "/t",
        "api_token_cmd": "echo x",
    }
    with pytest.raises(ConfigError, match="api_token_file, api_token_cmd: give the token one"):
        load_settings(flags, environ={}, airflow_home=tmp_path)
