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


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        # two unknown keys in one role
        ('[roles.embed]\nmodel = "m"\nnctx = 5\nqueue_sise = 3\n',
         ["roles.embed.nctx: unknown key", "roles.embed.queue_sise: unknown key"]),
        # a wrong type, an unknown key and a bad value, across roles and the top level
        ('soket = "/x.sock"\nmax_connections = 0\n[roles.embed]\nmodel = "m"\nn_ctx = "big"\n'
         '[roles.chat]\nmodel = "m"\nqueue_size = 0\nkill_after_s = -1\n',
         ["soket: unknown key", "roles.embed.n_ctx: Expected `int`", "max_connections must be > 0",
          "roles.chat.queue_size must be > 0", "roles.chat.kill_after_s must be > 0"]),
    ],
)  # fmt: skip
def test_every_bad_key_is_reported_each_naming_its_key(text: str, keys: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="w.toml")
    message = str(caught.value)
    assert message.startswith("w.toml: ") and all(key in message for key in keys), message
    problems = caught.value.problems  # type: ignore[attr-defined]
    assert len(problems) == len(keys), problems
    for key in keys:  # each key named by exactly one line, at its start
        assert sum(problem.startswith(key) for problem in problems) == 1, (key, problems)


def test_a_dropped_bad_value_is_not_also_reported_as_missing() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[roles.embed]\nmodel = 5\nn_ctx = 0\n")
    assert "n_ctx must be > 0" in str(caught.value)
    assert caught.value.problems == [  # type: ignore[attr-defined]
        "roles.embed.model: Expected `str`, got `int`",
        "roles.embed.n_ctx must be > 0, got 0",
    ]


def test_a_role_that_is_not_a_table_is_reported_once() -> None:
    """Found by review: ``roles.embed = "x"`` also said "configure at least one role"."""
    with pytest.raises(ConfigError) as caught:
        parse_config('[roles]\nembed = "x"\n')
    assert caught.value.problems == ["roles.embed: Expected `object`, got `str`"]  # type: ignore[attr-defined]


def test_the_problems_survive_pickling() -> None:
    import pickle

    with pytest.raises(ConfigError) as caught:
        parse_config('[roles.embed]\nmodel = "m"\nnctx = 5\nqueue_size = 0\n', source="w.toml")
    again = pickle.loads(pickle.dumps(caught.value))
    assert again.problems == caught.value.problems and str(again) == str(caught.value)  # type: ignore[attr-defined]
