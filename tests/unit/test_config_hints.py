"""A misspelt config key gets a `did you mean` for the nearest real key."""

from __future__ import annotations

import pytest

from lilbee_workers.config import parse_config
from lilbee_workers.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[roles.embed]\nmodel = "m"\nnctx = 5\n',
            "roles.embed.nctx: unknown key (did you mean `n_ctx`?)",
        ),
        ('[roles.chat]\nmodel = "m"\nrequest_timeout = 5\n', "did you mean `request_timeout_s`?"),
        (
            'soket = "/tmp/x.sock"\n[roles.embed]\nmodel = "m"\n',
            "soket: unknown key (did you mean `socket`?)",
        ),
        ('log_dirs = "x"\n[roles.embed]\nmodel = "m"\n', "did you mean `log_dir`?"),
    ],
)
def test_unknown_key_suggests_the_nearest(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert message in str(caught.value)


def test_no_suggestion_when_nothing_is_close() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('[roles.embed]\nmodel = "m"\nzzzzzz = 1\n')
    assert str(caught.value).endswith("roles.embed.zzzzzz: unknown key")
