"""`lilbee-workers pull`: a GGUF from a (stand-in) hub into the local cache, checked
against the hub's sha256 and the GGUF header, with clear errors for what goes wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_fixtures import REPO, cli, hub, json_lines, leftovers, second_embedder, sha256_of
from hub_standin import Hub

from lilbee_workers.errors import ConfigError
from lilbee_workers.hub.cache import resolve

__all__ = ["hub", "second_embedder"]  # fixtures


def test_pull_picks_q4_k_m_by_default_and_the_file_is_the_sources_bytes(
    hub: Hub, tiny_embedder: str, tmp_path: Path
) -> None:
    result = cli("pull", REPO, "--json")
    assert result.exit_code == 0, result.output
    [line] = json_lines(result)
    assert line["file"] == "tiny-embed-Q4_K_M.gguf" and line["downloaded"] is True
    # The independent reference: hashlib over the source file the stand-in serves.
    assert line["sha256"] == sha256_of(tiny_embedder) == sha256_of(str(line["path"]))
    assert Path(str(line["path"])).read_bytes() == Path(tiny_embedder).read_bytes()
    assert resolve(f"hf:{REPO}") == resolve(f"hf:{REPO}:q4_k_m") == line["path"]
    again = cli("pull", f"{REPO}:Q4_K_M", "--json")  # cached: verified again, not fetched
    assert json_lines(again)[0]["downloaded"] is False
    assert [name for name, _ in hub.gets] == ["tiny-embed-Q4_K_M.gguf"]


def test_quant_is_case_insensitive_and_a_missing_one_lists_what_the_repo_has(hub: Hub) -> None:
    result = cli("pull", f"{REPO}:q8_0")
    assert result.exit_code == 0, result.output
    assert f'model = "hf:{REPO}:Q8_0"' in result.stdout
    missing = cli("pull", f"{REPO}:Q5_K_M")
    assert missing.exit_code == 1
    assert f"{REPO} has no Q5_K_M file; it has: Q4_K_M, Q8_0" in missing.output
    as_json = json_lines(cli("pull", f"{REPO}:Q5_K_M", "--json"))[0]
    assert as_json["error"] == {"kind": "quant-not-found", "message": missing.output[7:].strip()}
    assert [name for name, _ in hub.gets] == ["tiny-embed-Q8_0.gguf"]


def test_a_corrupt_download_is_refused_removed_and_never_served(
    hub: Hub, tiny_embedder: str, tmp_path: Path
) -> None:
    hub.corrupt.add("tiny-embed-Q4_K_M.gguf")
    data = bytearray(Path(tiny_embedder).read_bytes())
    data[len(data) // 2] ^= 0xFF  # what the stand-in sends instead
    served = tmp_path / "served.bin"
    served.write_bytes(bytes(data))
    result = cli("pull", REPO, "--json")
    assert result.exit_code == 1
    error = json_lines(result)[-1]["error"]
    assert isinstance(error, dict) and error["kind"] == "checksum"
    assert f"expected {sha256_of(tiny_embedder)}, got {sha256_of(served)}" in error["message"]
    assert leftovers(tmp_path / "hf") == []
    with pytest.raises(ConfigError, match=f"run: lilbee-workers pull {REPO}"):
        resolve(f"hf:{REPO}")


def test_an_interrupted_transfer_resumes_and_ends_with_the_right_hash(
    hub: Hub, tiny_embedder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # huggingface_hub keeps what it had received in whole chunks (10 MB); small chunks
    # let a tiny file show the resume.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    hub.drop_once.add("tiny-embed-Q4_K_M.gguf")  # the first GET stops halfway
    result = cli("pull", REPO, "--json")
    assert result.exit_code == 0, result.output
    (first, whole), (second, resumed) = hub.gets
    assert first == second == "tiny-embed-Q4_K_M.gguf" and whole == ""
    half = Path(tiny_embedder).stat().st_size // 2
    assert resumed.startswith("bytes=") and 0 < int(resumed[6:-1]) <= half  # from where it was
    assert json_lines(result)[-1]["sha256"] == sha256_of(tiny_embedder)
    assert sha256_of(resolve(f"hf:{REPO}")) == sha256_of(tiny_embedder)


def test_a_file_that_is_not_a_gguf_is_refused_and_removed(hub: Hub, tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"<html>not a model</html>" * 100)
    hub.add("test/fake-GGUF", "fake-Q4_K_M.gguf", fake)
    result = cli("pull", "test/fake-GGUF")
    assert result.exit_code == 1
    assert "fake-Q4_K_M.gguf: it is not a GGUF file (no GGUF magic bytes)" in result.output
    assert leftovers(tmp_path / "hf") == []


def test_a_split_model_comes_whole_and_a_vision_repo_brings_its_projector(
    hub: Hub, tiny_embedder: str, second_embedder: str, tiny_projector: str
) -> None:
    repo = "test/vision-GGUF"
    hub.add(repo, "m-Q4_K_M-00001-of-00002.gguf", Path(tiny_embedder))
    hub.add(repo, "m-Q4_K_M-00002-of-00002.gguf", Path(second_embedder))
    hub.add(repo, "m-Q8_0.gguf", Path(second_embedder))
    hub.add(repo, "mmproj-m-f16.gguf", Path(tiny_projector))
    result = cli("pull", repo, "--json")
    assert result.exit_code == 0, result.output
    files = [line["file"] for line in json_lines(result)]
    assert files == ["m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf",
                     "mmproj-m-f16.gguf"]  # fmt: skip
    assert resolve(f"hf:{repo}").endswith("m-Q4_K_M-00001-of-00002.gguf")
    assert sha256_of(resolve(f"hf:{repo}", projector=True)) == sha256_of(tiny_projector)
    Path(resolve(f"hf:{repo}")).with_name("m-Q4_K_M-00002-of-00002.gguf").unlink()
    with pytest.raises(ConfigError, match="has 1 of its 2 parts in the local model cache"):
        resolve(f"hf:{repo}")  # a split model is served whole or not at all


def test_missing_repo_no_network_and_no_disk_space_are_said_plainly(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = json_lines(cli("pull", "test/absent-GGUF", "--json"))[0]["error"]
    assert isinstance(missing, dict) and missing["kind"] == "repo-not-found"
    assert "test/absent-GGUF is not on the hub at http://127.0.0.1" in missing["message"]

    import shutil

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1000))
    full = cli("pull", REPO)
    assert full.exit_code == 1 and "not enough disk space" in full.output
    assert "the download needs 0.1 MiB, 0.0 MiB is free" in full.output
    assert hub.gets == []  # refused before any byte moved
    monkeypatch.undo()

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    offline = cli("pull", REPO)
    assert offline.exit_code == 1
    assert "cannot reach the hub at http://127.0.0.1:9: ConnectError" in offline.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in cli("pull", REPO).output


def test_a_redirect_to_another_host_is_said(hub: Hub, tiny_embedder: str) -> None:
    hub.redirect = True  # resolve answers 302 to localhost (the hub is 127.0.0.1)
    result = cli("pull", REPO, "--json")
    assert result.exit_code == 0, result.output
    note, pulled = json_lines(result)
    assert note == {"note": "tiny-embed-Q4_K_M.gguf: the hub at 127.0.0.1 redirects the "
                            "download to localhost"}  # fmt: skip
    assert pulled["sha256"] == sha256_of(tiny_embedder)


@pytest.mark.parametrize(
    "name", ["../etc", "a/b/c", "/etc/passwd", "a/..", "https://evil.example/x", "a/b:../c"]
)
def test_names_that_could_leave_the_cache_are_refused(hub: Hub, name: str) -> None:
    result = cli("pull", name)
    assert result.exit_code == 1
    assert "not a model name" in result.output or "not a quantization name" in result.output
    assert hub.gets == []


def test_a_hub_file_name_that_climbs_out_is_refused(hub: Hub, tiny_embedder: str) -> None:
    hub.add("test/evil-GGUF", "../../evil-Q4_K_M.gguf", Path(tiny_embedder))
    result = cli("pull", "test/evil-GGUF")
    assert result.exit_code == 1
    assert "refusing the hub's file name '../../evil-Q4_K_M.gguf'" in result.output
    assert hub.gets == []


def test_the_token_comes_from_the_environment_and_is_never_shown(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hf_notARealToken0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    hub.redirect = True  # the hub's redirect to another host must not carry it
    pulled = cli("pull", REPO, "--json")
    missing = cli("pull", "test/absent-GGUF")
    assert pulled.exit_code == 0 and missing.exit_code == 1
    assert secret not in pulled.output + missing.output
    sent = {path: auth for path, auth in hub.tokens}
    assert sent[f"/api/models/{REPO}/revision/main"] == f"Bearer {secret}"
    cdn = [auth for path, auth in hub.tokens if path.startswith("/cdn/")]
    assert cdn == [""]  # the download from the other host went without it
