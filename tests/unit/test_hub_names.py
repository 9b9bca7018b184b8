"""Model names and quant selection (pure logic): which files ``ORG/REPO[:QUANT]`` means,
as ``llama-server -hf`` picks them, and which names are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from lilbee_workers.hub.names import HubError, ModelRef, check_file_name, parse
from lilbee_workers.hub.quants import Choice, available, choose, label

QWEN = ["qwen2.5-0.5b-instruct-q4_k_m.gguf", "qwen2.5-0.5b-instruct-q8_0.gguf",
        "qwen2.5-0.5b-instruct-fp16.gguf", "README.md", "LICENSE"]  # fmt: skip


def test_parse_takes_org_repo_and_an_optional_quant() -> None:
    assert parse("Qwen/Qwen2.5-0.5B-Instruct-GGUF") == ModelRef("Qwen/Qwen2.5-0.5B-Instruct-GGUF")
    assert parse("hf:a/b:Q4_K_M") == ModelRef("a/b", "Q4_K_M")
    assert str(parse("a/b.c_d-e:q8_0")) == "a/b.c_d-e:q8_0"


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "a/b/c",
        "../a",
        "a/..",
        "/etc/x",
        "a//b",
        "a/b:-",
        "a/b:Q4/..",
        "a/-b",
        "http://x/y",
        "a/b c",
        "a--x/b",
        "a/b:Q4 K",
    ],
)
def test_parse_refuses_what_is_not_plainly_a_repo_id(name: str) -> None:
    with pytest.raises(HubError):
        parse(name)


@pytest.mark.parametrize(
    "path", ["../x.gguf", "a/../x.gguf", "/x.gguf", "a\\x.gguf", "x.bin", "a//x.gguf", ".gguf"]
)
def test_file_names_from_the_hub_that_could_escape_are_refused(path: str) -> None:
    with pytest.raises(HubError, match="refusing the hub's file name"):
        check_file_name(path)


def test_labels_as_hub_repos_write_them() -> None:
    assert label("nomic-embed-text-v1.5.Q4_K_M.gguf") == "Q4_K_M"
    assert label("bge-reranker-v2-m3-Q8_0.gguf") == "Q8_0"
    assert label("Q4_K_M/Big-UD-Q4_K_XL-00001-of-00003.gguf") == "Q4_K_XL"
    assert label("model-IQ4_XS.gguf") == "IQ4_XS" and label("m-bf16.gguf") == "BF16"
    assert label("model.gguf") == ""


def test_default_is_q4_k_m_and_a_named_quant_is_case_insensitive() -> None:
    assert choose("q/w", "", QWEN).files == ("qwen2.5-0.5b-instruct-q4_k_m.gguf",)
    assert choose("q/w", "Q8_0", QWEN) == Choice("Q8_0", ("qwen2.5-0.5b-instruct-q8_0.gguf",))


def test_without_q4_k_m_the_only_gguf_else_a_list_of_choices() -> None:
    assert choose("a/b", "", ["model.gguf", "x.txt"]).files == ("model.gguf",)
    with pytest.raises(
        HubError, match=r"no Q4_K_M file and more than one GGUF; it has: F16, Q8_0 "
    ):
        choose("a/b", "", ["m-Q8_0.gguf", "m-F16.gguf"])
    with pytest.raises(HubError, match=r"a/b has no IQ2_M file; it has: FP16, Q4_K_M, Q8_0"):
        choose("a/b", "iq2_m", [f.replace("qwen2.5-0.5b-instruct", "m") for f in QWEN])
    assert available(QWEN) == ["FP16", "Q4_K_M", "Q8_0"]


def test_split_models_come_whole_and_projectors_follow_the_model() -> None:
    files = ["m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M-00001-of-00002.gguf", "m-Q8_0.gguf",
             "mmproj-m-Q8_0.gguf", "mmproj-m-f16.gguf"]  # fmt: skip
    four = choose("a/b", "", files)
    assert four.files == ("m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf")
    assert four.model_file == "m-Q4_K_M-00001-of-00002.gguf"
    assert four.mmproj == "mmproj-m-f16.gguf"  # no Q4_K_M projector: F16, the usual one
    assert choose("a/b", "q8_0", files).mmproj == "mmproj-m-Q8_0.gguf"
    assert "mmproj-m-f16.gguf" in four.all_files


def test_a_bad_hf_name_in_a_config_is_a_config_error_without_a_pull_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lilbee_workers.config import RoleConfig
    from lilbee_workers.errors import ConfigError

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="is not a model name") as bad:
        RoleConfig(model="hf:../../etc").resolved_model()
    assert "run:" not in str(bad.value)
    with pytest.raises(ConfigError, match="run: lilbee-workers pull a/b:Q8_0"):
        RoleConfig(model="hf:a/b:Q8_0").resolved_model()
