"""Config refuses durations that would break timers (issue 9 item 6)."""

from __future__ import annotations

import pytest

from lilbee_workers.config import parse_config
from lilbee_workers.errors import ConfigError


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("start_timeout_s", "inf"),
        ("kill_after_s", "nan"),
        ("heartbeat_timeout_s", "1e12"),
        ("cancel_grace_s", "-1.0"),
        ("failed_cooldown_s", "inf"),
    ],
)
def test_non_finite_or_absurd_durations_are_refused_naming_the_key(key: str, value: str) -> None:
    text = f'[roles.embed]\nmodel = "m.gguf"\n{key} = {value}\n'
    with pytest.raises(ConfigError, match=rf"roles\.embed\.{key} must be"):
        parse_config(text)


def test_drain_timeout_must_be_finite() -> None:
    with pytest.raises(ConfigError, match="drain_timeout_s"):
        parse_config('drain_timeout_s = inf\n[roles.embed]\nmodel = "m.gguf"\n')


def test_sane_durations_pass() -> None:
    config = parse_config('[roles.embed]\nmodel = "m.gguf"\nstart_timeout_s = 600.0\n')
    assert config.roles["embed"].start_timeout_s == 600.0


def test_old_request_timeout_key_is_read_as_kill_after_s_with_a_warning() -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = parse_config('[roles.embed]\nmodel = "m.gguf"\nrequest_timeout_s = 42.0\n')
    assert config.roles["embed"].kill_after_s == 42.0
    assert any("kill_after_s" in str(w.message) for w in caught)
