"""``pull``: fetch a model's files from the hub into the cache and verify each one.

huggingface_hub does the transfer (it honours ``HF_ENDPOINT``, ``HF_TOKEN`` or its own
login, and resumes partial downloads); this module decides which files, checks there is
room for them, says where the hub redirects the download, and verifies every file
(``verify``) before it counts as pulled."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from lilbee_workers.hub.cache import cache_dir
from lilbee_workers.hub.names import HubError, ModelRef, check_file_name
from lilbee_workers.hub.quants import Choice, choose
from lilbee_workers.hub.verify import remove_cached, verify

DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass
class Pulled:
    """One file pulled and verified."""

    file: str
    path: str
    size: int
    sha256: str
    seconds: float
    downloaded: bool
    """False when the cache had it already (it was verified again all the same)."""


@dataclass
class Remote:
    """A file as the hub lists it: size, and sha256 (LFS) or git blob id."""

    path: str
    size: int
    sha256: str | None
    git_oid: str


class PullReport(Protocol):
    """Where a pull's progress goes: a terminal's bars, JSON lines, log lines."""

    def note(self, text: str) -> None: ...
    def start(self, file: str, size: int) -> None: ...
    def advance(self, file: str, done: int) -> None: ...
    def finish(self, pulled: Pulled) -> None: ...


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or DEFAULT_ENDPOINT


def pull(ref: ModelRef, report: PullReport) -> tuple[Choice, list[Pulled]]:
    """Download (or find cached) and verify every file ``ref`` means."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise HubError("network", "HF_HUB_OFFLINE is set: pulling needs the hub (unset it)")
    remote = list_remote(ref.repo)
    choice = choose(ref.repo, ref.quant, remote)
    wanted = [remote[check_file_name(name)] for name in choice.all_files]
    check_space([w for w in wanted if not _cached(ref.repo, w.path)])
    return choice, [_pull_one(ref.repo, item, report) for item in wanted]


def list_remote(repo: str) -> dict[str, Remote]:
    """The repo's files (at ``main``) with sizes and hashes; ``HubError`` for a missing
    repo or an unreachable hub."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    try:
        _probe(repo)
        entries = list(HfApi(endpoint=endpoint()).list_repo_tree(repo, recursive=True))
    except Exception as exc:
        raise _hub_error(repo, exc) from None
    return {
        e.path: Remote(e.path, e.size, e.lfs.sha256 if e.lfs else None, e.blob_id)
        for e in entries
        if isinstance(e, RepoFile)
    }


def _probe(repo: str) -> None:
    """Ask for the repo's info once, without huggingface_hub's retries (half a minute of
    backoff): no network, or no such repo, is said at once."""
    from huggingface_hub import get_session, hf_raise_for_status
    from huggingface_hub.utils._headers import build_hf_headers

    url = f"{endpoint()}/api/models/{repo}/revision/main"
    hf_raise_for_status(get_session().get(url, headers=build_hf_headers(), timeout=10.0))


def _hub_error(repo: str, exc: Exception) -> HubError:
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        return HubError("repo-not-found", f"{repo} is not on the hub at {endpoint()} (check "
                        "the name; a private or gated repo needs HF_TOKEN or `hf auth "
                        "login`)")  # fmt: skip
    if isinstance(exc, HfHubHTTPError):
        return HubError("hub-error", f"the hub at {endpoint()} answered {status} for {repo}")
    return HubError("network", f"cannot reach the hub at {endpoint()}: {type(exc).__name__}: "
                    f"{exc} (no network? models already pulled still serve offline)")  # fmt: skip


def _cached(repo: str, file: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, file, cache_dir=cache_dir())
    return isinstance(found, str)


def check_space(missing: list[Remote]) -> None:
    """Refuse before any byte moves when the cache's disk lacks room for the files."""
    needed = sum(item.size for item in missing)
    if not needed:
        return
    where = cache_dir()
    probe = next(p for p in (where, *where.parents) if p.exists())
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise HubError("no-space", f"not enough disk space in {where}: the download needs "
                       f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB is free (free "
                       "some, or set HF_HOME to a bigger disk)")  # fmt: skip


def _pull_one(repo: str, item: Remote, report: PullReport) -> Pulled:
    from huggingface_hub import hf_hub_download

    began = time.monotonic()
    downloaded = not _cached(repo, item.path)
    if downloaded:
        _say_redirect(repo, item.path, report)
    report.start(item.path, item.size)
    try:
        bar = cast(Any, _bar_class(item.path, report.advance))
        path = hf_hub_download(repo, item.path, cache_dir=cache_dir(), endpoint=endpoint(),
                               tqdm_class=bar)  # fmt: skip
    except Exception as exc:
        raise _hub_error(repo, exc) from None
    try:
        sha = verify(str(path), item.path, item.sha256, item.git_oid, item.size)
    except BaseException:  # interrupted while hashing: a fresh download is left unverified
        if downloaded:  # so it goes; a copy verified by an earlier pull stays
            remove_cached(str(path))
        raise
    pulled = Pulled(item.path, str(path), item.size, sha, time.monotonic() - began, downloaded)
    report.finish(pulled)
    return pulled


def _say_redirect(repo: str, file: str, report: PullReport) -> None:
    """Say where the hub sends the download when it is another host; refuse a redirect
    from https to plain http."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, file, endpoint=endpoint()))
    except Exception as exc:
        raise _hub_error(repo, exc) from None
    hub, target = urlsplit(endpoint()), urlsplit(meta.location)
    if target.hostname and target.hostname != hub.hostname:
        if hub.scheme == "https" and target.scheme != "https":
            raise HubError("redirect", f"{file}: the hub redirects the download to "
                           f"{target.scheme}://{target.hostname} (not https); refused")  # fmt: skip
        report.note(f"{file}: the hub at {hub.hostname} redirects the download to "
                    f"{target.hostname}")  # fmt: skip


def _bar_class(file: str, advance: Callable[[str, int], None]) -> type:
    """A stand-in for the tqdm class huggingface_hub drives: it passes the byte count on."""

    class Bar:
        def __init__(self, **kwargs: Any) -> None:
            self.n = int(kwargs.get("initial") or 0)
            advance(file, self.n)

        def update(self, n: int | None = 1) -> None:
            self.n += n or 0
            advance(file, self.n)

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def close(self) -> None:
            return None

    return Bar
