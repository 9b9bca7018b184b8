"""Config: TOML in, errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lilbee_workers import ConfigError, load_config
from lilbee_workers.config import parse_config


def test_toml_loads_into_typed_role_configs(tmp_path: Path) -> None:
    path = tmp_path / "workers.toml"
    path.write_text(
        'log_dir = "/tmp/x"\n[roles.embed]\nmodel = "/m/e.gguf"\nn_ctx = 512\n'
        '[roles.chat]\nmodel = "/m/c.gguf"\nheartbeat_timeout_s = 2.5\n'
    )
    config = load_config(path)
    assert config.roles["embed"].n_ctx == 512
    assert config.roles["chat"].heartbeat_timeout_s == 2.5
    assert config.roles["chat"].n_ctx == 2048  # default


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[roles.embed]\nmodel = "m"\nn_ctx = "big"\n', r"roles\.embed\.n_ctx"),
        ('[roles.embed]\nmodel = "m"\nn_cxt = 5\n', "n_cxt"),
        ('[roles.summarize]\nmodel = "m"\n', r"roles\.summarize: unknown role"),
        ('[roles.embed]\nmodel = "m"\nqueue_size = 0\n', r"roles\.embed\.queue_size must be > 0"),
        ('[roles.vision]\nmodel = "m"\n', r"roles\.vision\.mmproj"),
        ("roles = {}\n", "at least one role"),
        ("[roles.embed\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(text)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")
