"""The systemd unit's ``Documentation=`` names files a documented install step really
creates: the step from docs/operations.md is run (into a scratch directory standing in
for the unit's) and every file the unit names must then be there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "lilbee-workers.service"
OPERATIONS = ROOT / "docs" / "operations.md"


def documentation_uris() -> list[str]:
    return [
        uri
        for line in UNIT.read_text().splitlines()
        if line.startswith("Documentation=")
        for uri in line.removeprefix("Documentation=").split()
    ]


def test_every_documented_file_is_created_by_the_install_steps(tmp_path: Path) -> None:
    uris = documentation_uris()
    assert uris, "the unit names its documentation"
    files = [Path(uri.removeprefix("file://")) for uri in uris if uri.startswith("file://")]
    assert all(uri.startswith(("file://", "https://")) for uri in uris), uris
    for doc in files:
        steps = [
            line.strip().removeprefix("sudo ")
            for line in OPERATIONS.read_text().splitlines()
            if re.match(r"\s*sudo install .*" + re.escape(str(doc.parent)), line)
        ]
        assert steps, f"no install step in operations.md creates {doc.parent}"
        scratch = tmp_path / doc.parent.relative_to("/")
        for step in steps:
            command = step.split("  #")[0].replace(str(doc.parent), str(scratch))
            subprocess.run(["bash", "-c", command], cwd=ROOT, check=True, timeout=30)
        assert (scratch / doc.name).is_file(), f"{doc} is not created by: {steps}"
