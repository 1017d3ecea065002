"""The image and the compose file are safe by default, and install what CI installs.

Docker does not run here; these read the files the way Docker and Compose do and check what
they promise: production mode, secrets the deployer must supply, nothing published on every
interface, a readiness healthcheck, pinned versions, and simulator credentials that work.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Environment, Settings
from app.simulator.config import CredentialSet

ROOT = Path(__file__).resolve().parents[2]
SECRETS = (
    "VIPPS_POS_SECURITY__ADMIN_API_KEY",
    "VIPPS_POS_SECURITY__ENCRYPTION_KEY",
    "VIPPS_POS_VIPPS__CLIENT_ID",
    "VIPPS_POS_VIPPS__CLIENT_SECRET",
    "VIPPS_POS_VIPPS__SUBSCRIPTION_KEY",
    "VIPPS_POS_WEBHOOKS__PUBLIC_URL",
)
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?]))?([^}]*)\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        value = env.get(name) or None
        if value is not None:
            return value
        if kind == "?":
            raise LookupError(f"{name}: {rest}")
        return rest if kind == "-" else ""

    return _VARIABLE.sub(one, text)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def service_environment(env: dict[str, str]) -> dict[str, str]:
    raw: dict[str, str] = compose()["services"]["vipps-pos"]["environment"]
    return {name: interpolate(str(value), env) for name, value in raw.items()}


def test_compose_requires_every_secret_and_defaults_to_production() -> None:
    raw = compose()["services"]["vipps-pos"]["environment"]
    for name in (*SECRETS, "VIPPS_POS_DATABASE__URL"):
        with pytest.raises(LookupError):
            service_environment(
                {k: "x" for k in SECRETS if k != name} | {"POSTGRES_PASSWORD": "p"}
                if name != "VIPPS_POS_DATABASE__URL"
                else dict.fromkeys(SECRETS, "x")
            )
        assert ":?" in str(raw[name]), name
    env = service_environment({**dict.fromkeys(SECRETS, "x"), "POSTGRES_PASSWORD": "p"})
    assert env["VIPPS_POS_ENVIRONMENT"] == "production"
    assert compose()["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )


def test_compose_publishes_on_loopback_and_checks_readiness() -> None:
    services = compose()["services"]
    for name in ("vipps-pos", "simulator"):
        for port in services[name]["ports"]:
            published = interpolate(port, {})
            assert published.startswith("127.0.0.1:"), (name, published)
    probe = " ".join(services["vipps-pos"]["healthcheck"]["test"])
    assert "/readyz" in probe


def test_the_sim_profile_comment_gives_settings_that_work_with_the_simulator() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    block = text.split("these values work as they are:", 1)[1].split(
        "docker compose --profile sim"
    )[0]
    words = shlex.split(" ".join(line.lstrip("# ").rstrip("\\ ") for line in block.splitlines()))
    given = dict(word.split("=", 1) for word in words if "=" in word)
    env = service_environment(given)
    assert env["VIPPS_POS_ENVIRONMENT"] == "development"
    nested: dict[str, Any] = {}
    for name, value in env.items():
        path = name.removeprefix("VIPPS_POS_").lower().split("__")
        target = nested
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    settings = Settings.model_validate(nested)
    settings.check_startable()  # development mode: the simulator is allowed
    sim = CredentialSet()
    assert settings.vipps.client_id.get_secret_value() == sim.client_id
    assert settings.vipps.client_secret.get_secret_value() == sim.client_secret
    assert settings.vipps.subscription_key.get_secret_value() in sim.subscription_keys
    assert settings.vipps.base_url == "http://simulator:8081"
    # The same values are refused in production mode, by name.
    production = settings.model_copy(update={"environment": Environment.PRODUCTION})
    assert any("VIPPS_POS_VIPPS__BASE_URL" in p for p in production.production_problems())


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_image_runs_in_production_mode_and_checks_readiness() -> None:
    runtime = _dockerfile().split("AS runtime", 1)[1]
    assert re.search(r"VIPPS_POS_ENVIRONMENT=production", runtime)
    healthcheck = runtime.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    assert "/readyz" in healthcheck
    assert "USER vipps" in runtime


def test_image_and_ci_install_the_pinned_versions() -> None:
    dockerfile = _dockerfile()
    assert "constraints.txt" in dockerfile.split("RUN", 1)[0]  # copied before installing
    assert "make install-prod" in dockerfile
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text()
    makefile = (ROOT / "Makefile").read_text()
    installs = [
        line
        for line in makefile.splitlines()
        if "pip install" in line and "--upgrade pip" not in line
    ]
    assert installs
    assert all("-c $(CONSTRAINTS)" in line for line in installs), installs
    assert re.search(r"^lock:.*\n\t.*pip-compile", makefile, re.MULTILINE)
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name in re.findall(r'^\s+"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?[<>=]', pyproject, re.MULTILINE):
        assert name.lower().replace("_", "-") in {p.lower() for p in pins}, name


def test_make_serve_and_migrate_keep_the_editable_install() -> None:
    """With the development install present, serve/migrate never run the plain install that
    would replace it (the image has only the plain one)."""
    assert (ROOT / ".venv" / ".installed-dev").exists()  # make test installs it
    planned = subprocess.run(
        ["make", "-n", "serve", "migrate"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "vipps-pos serve" in planned
    assert "vipps-pos migrate" in planned
    assert "-c constraints.txt ." not in planned.replace("'.[dev]'", "")
