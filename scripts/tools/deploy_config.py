"""Checks the settings that deploy/ and the Dockerfile give presenced against
a real binary, so a misspelt variable or a bad value cannot ship.

For each configuration (the Dockerfile's ENV, the systemd unit and its
environment file, each Kubernetes Deployment's container env):

  - (a Deployment's env is taken over the image's ENV, as in a pod)
  - every PRESENCE_* name must be one the binary knows (`presenced --help`
    lists each setting's variable);
  - `presenced --check-config` with exactly that environment (secrets from
    Secrets or placeholders replaced by valid test values, data directories
    by a scratch directory) must exit 0;
  - the shutdown timings must fit: a Deployment's terminationGracePeriodSeconds
    >= its preStop sleep + PRESENCE_SHUTDOWN_GRACE + 5 s, the unit's
    TimeoutStopSec >= PRESENCE_SHUTDOWN_GRACE + 5 s.

Settings of work in progress elsewhere are listed in PENDING with the issue
that adds them. A pending name the binary does not know yet is left out of
that configuration's check and reported as PENDING; once the binary knows it,
its entry here must go (the check fails until it does), so nothing stays
unchecked by accident.

    python deploy_config.py PRESENCED_BIN REPO_ROOT
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PENDING = {}

SECRET_VALUES = {
    # secretKeyRef key -> a valid value for --check-config
    "store": "redis://127.0.0.1:6379/0",
    "token-key": base64.b64encode(os.urandom(32)).decode(),
    "service-keys": "backend=" + "ab" * 32,
}
PLACEHOLDERS = {
    "PRESENCE_TOKEN_KEY": SECRET_VALUES["token-key"],
}


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.pending = 0

    def ok(self, what: str) -> None:
        print(f"PASS {what}")
        self.passed += 1

    def fail(self, what: str, why: str) -> None:
        print(f"FAIL {what}: {why}")
        self.failed += 1

    def check(self, what: str, cond: bool, why: str) -> None:
        self.ok(what) if cond else self.fail(what, why)


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value.strip())
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return float(m[1]) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m[2]]


def dockerfile_env(path: Path) -> dict[str, str]:
    text = path.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def unit_env(unit: Path, env_file: Path) -> tuple[dict[str, str], dict[str, str]]:
    env: dict[str, str] = {}
    service: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line[len("Environment="):].partition("=")
            env[name] = value.replace("%S", "/var/lib")
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            service[key] = value
    for line in env_file.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = PLACEHOLDERS.get(name, value)
    return env, service


def deployment_envs(path: Path) -> list[tuple[str, dict[str, str], dict]]:
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            env = {}
            for var in container.get("env", []):
                if "value" in var:
                    env[var["name"]] = str(var["value"])
                else:
                    env[var["name"]] = SECRET_VALUES[var["valueFrom"]["secretKeyRef"]["key"]]
            out.append((f"{path.relative_to(ROOT)} ({container['name']})", env, {"pod": pod, "container": container}))
    return out


def known_env(binary: str) -> set[str]:
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True, timeout=30).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", help_text))


def check_config(checks: Checks, binary: str, known: set[str], what: str, env: dict[str, str]) -> None:
    env = dict(env)
    for name in sorted(env):
        if name in PENDING:
            if name in known:
                checks.fail(f"{what}: {name}", f"the binary knows it now: remove it from PENDING in {__file__}")
            else:
                print(f"PENDING {what}: {name} ({PENDING[name]}): not in this binary yet, left out of the check")
                checks.pending += 1
                del env[name]
            continue
        if name.startswith("PRESENCE_") or name == "RUST_LOG":
            checks.check(f"{what}: {name} is a setting", name in known,
                         f"{binary} --help names no such variable")
    with tempfile.TemporaryDirectory() as scratch:
        if "PRESENCE_DATA_DIR" in env:
            env["PRESENCE_DATA_DIR"] = scratch
        run = subprocess.run([binary, "--check-config"], env={"PATH": os.environ["PATH"], **env},
                             capture_output=True, text=True, timeout=30)
    checks.check(f"{what}: presenced --check-config exits 0", run.returncode == 0,
                 f"exit {run.returncode}: {run.stderr.strip() or run.stdout.strip()}")


ROOT = Path(".")


def main() -> int:
    global ROOT
    binary, ROOT = sys.argv[1], Path(sys.argv[2]).resolve()
    checks = Checks()
    known = known_env(binary)

    # The image's own defaults bind 0.0.0.0, so they are valid with auth on.
    image = dockerfile_env(ROOT / "Dockerfile")
    checks.check("Dockerfile ENV found", "PRESENCE_LISTEN" in image, f"no ENV PRESENCE_LISTEN in the Dockerfile: {image}")
    image["PRESENCE_SERVICE_KEYS"] = SECRET_VALUES["service-keys"]
    check_config(checks, binary, known, "Dockerfile ENV (+ a service key)", image)

    unit = ROOT / "deploy/systemd/presenced.service"
    env, service = unit_env(unit, ROOT / "deploy/systemd/presenced.env")
    check_config(checks, binary, known, "systemd unit + presenced.env", env)
    grace = seconds(env.get("PRESENCE_SHUTDOWN_GRACE", "10s"))
    stop = seconds(service.get("TimeoutStopSec", "90s"))
    checks.check("systemd: TimeoutStopSec >= shutdown grace + 5 s", stop >= grace + 5,
                 f"TimeoutStopSec {stop} s, PRESENCE_SHUTDOWN_GRACE {grace} s")

    for path in sorted((ROOT / "deploy/kubernetes").glob("*/*.yaml")):
        for what, env, spec in deployment_envs(path):
            # The container starts from the image's environment.
            check_config(checks, binary, known, what + " over the image's ENV", {**dockerfile_env(ROOT / "Dockerfile"), **env})
            grace = seconds(env.get("PRESENCE_SHUTDOWN_GRACE", "10s"))
            pre_stop = spec["container"].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            termination = spec["pod"].get("terminationGracePeriodSeconds", 30)
            checks.check(f"{what}: terminationGracePeriodSeconds >= preStop + shutdown grace + 5 s",
                         termination >= pre_stop + grace + 5,
                         f"{termination} < {pre_stop} + {grace} + 5")

    print(f"deploy config: {checks.passed} passed, {checks.failed} failed, {checks.pending} pending")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
