"""The OpenAI-compatible HTTP face of the daemon (optional extra ``http``).

``serve --http 127.0.0.1:8088`` (or ``http_listen`` in the config) serves, beside the
Unix socket, ``/v1/embeddings``, ``/v1/chat/completions``, ``/v1/completions``,
``/v1/rerank``, ``/v1/models``, ``/health`` and ``/metrics``. See docs/http.md.
"""
