"""compose/docker-compose.yml: four PostgreSQL shards ready for two-phase commit.

There may be no Docker where the suite runs, so the file is checked as data:
parsed with PyYAML, then every shard service is checked for what shardsession
needs (``max_prepared_transactions`` above 0, a health check, a data volume, a
published port) and every variable it uses for a definition in ``.env.example``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE / ".env.example"
SHARDS = ["s0", "s1", "s2", "s3"]
DATA_DIR = "/var/lib/postgresql/data"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME;
# "$$" is an escaped dollar that compose leaves to the container's shell.
_VARIABLE = re.compile(
    r"(?<!\$)\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<rest>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))"
)


def _compose_text() -> str:
    """The compose file without its comment lines (compose does not interpolate those)."""
    lines = COMPOSE_FILE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example line {line!r} is not NAME=value"
        values[name.strip()] = value.strip()
    return values


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Substitute variables the way compose does with ``env`` as the .env file."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        rest = match.group("rest") or ""
        value = env.get(name)
        if rest.startswith((":-", "-")):
            default = rest[2:] if rest.startswith(":-") else rest[1:]
            return value if value else default
        assert value is not None, f"${name} has no value in .env.example"
        return value

    return _VARIABLE.sub(substitute, text).replace("$$", "$")


def _shard_services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    return {name: services[name] for name in sorted(services) if name.startswith("shard-")}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "no command: the image's default leaves max_prepared_transactions at 0"
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _settings(service: dict[str, Any]) -> dict[str, str]:
    """The ``-c name=value`` (or ``--name=value``) server settings of a service."""
    args = _command(service)
    assert args[0] == "postgres", f"the command must start the server: {args}"
    found = {}
    for i, arg in enumerate(args):
        item = None
        if arg == "-c" and i + 1 < len(args):
            item = args[i + 1]
        elif arg.startswith("--") and "=" in arg:
            item = arg[2:]
        if item is not None:
            name, _, value = item.partition("=")
            found[name.replace("-", "_")] = value
    return found


def test_one_service_per_shard() -> None:
    assert list(_shard_services()) == [f"shard-{shard}" for shard in SHARDS]


@pytest.mark.parametrize("shard", SHARDS)
def test_two_phase_commit_is_enabled(shard: str) -> None:
    settings = _settings(_shard_services()[f"shard-{shard}"])
    assert "max_prepared_transactions" in settings
    prepared = int(settings["max_prepared_transactions"])
    assert prepared > 0
    # Every connection may hold a transaction being prepared (the PostgreSQL advice).
    connections = int(settings.get("max_connections", "100"))
    assert prepared >= connections


@pytest.mark.parametrize("shard", SHARDS)
def test_health_check_uses_pg_isready(shard: str) -> None:
    check = _shard_services()[f"shard-{shard}"].get("healthcheck")
    assert check and not check.get("disable")
    test = check["test"]
    text = test if isinstance(test, str) else " ".join(test)
    assert "pg_isready" in text
    assert "interval" in check and "retries" in check


@pytest.mark.parametrize("shard", SHARDS)
def test_data_lives_in_a_named_volume_of_its_own(shard: str) -> None:
    declared = _compose().get("volumes") or {}
    mounts = _shard_services()[f"shard-{shard}"].get("volumes") or []
    named = [m.split(":")[0] for m in mounts if m.split(":")[1:2] == [DATA_DIR]]
    assert len(named) == 1, f"shard-{shard} mounts no named volume at {DATA_DIR}: {mounts}"
    assert named[0] in declared, f"volume {named[0]} is not declared under volumes:"
    others = {
        m.split(":")[0]
        for name, service in _shard_services().items()
        if name != f"shard-{shard}"
        for m in service.get("volumes") or []
    }
    assert named[0] not in others, f"volume {named[0]} is shared with another shard"


def test_each_shard_publishes_its_own_host_port() -> None:
    env = _env_example()
    host_ports = []
    for name, service in _shard_services().items():
        (mapping,) = service.get("ports") or [None]
        assert mapping, f"{name} publishes no port"
        parts = _interpolate(str(mapping), env).split(":")
        assert parts[-1] == "5432", f"{name} must publish the server's port 5432: {mapping}"
        host_ports.append(int(parts[-2]))
    assert len(set(host_ports)) == len(SHARDS)


def test_text_order_by_collation_is_c() -> None:
    # Cross-shard ORDER BY on text merges in code-point order, PostgreSQL's "C" collation.
    for name, service in _shard_services().items():
        args = str((service.get("environment") or {}).get("POSTGRES_INITDB_ARGS", ""))
        assert "--locale=C" in args.split() or "--no-locale" in args.split(), name


def test_every_variable_is_defined_in_env_example() -> None:
    env = _env_example()
    text = _compose_text()
    used = {m.group("braced") or m.group("bare") for m in _VARIABLE.finditer(text)}
    assert used, "the compose file uses no variables: nothing to configure in .env?"
    assert sorted(used - set(env)) == []
    assert env.get("POSTGRES_PASSWORD"), ".env.example must show a POSTGRES_PASSWORD"
    # The whole file interpolates with .env.example's values.
    _interpolate(text, env)


def test_the_example_ports_are_the_documented_defaults() -> None:
    env = _env_example()
    text = _compose_text()
    for shard in SHARDS:
        variable = f"SHARDSESSION_{shard.upper()}_PORT"
        match = re.search(r"\$\{" + variable + r":-(\d+)\}", text)
        assert match, f"{variable} has no default in docker-compose.yml"
        assert env[variable] == match.group(1)


def test_the_real_env_file_is_never_committed(tmp_path: Path) -> None:
    # compose/.env holds the password: git must ignore it (the example is tracked)
    import subprocess

    root = COMPOSE.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "-q", "compose/.env"], check=False
    )
    assert ignored.returncode == 0, "compose/.env is not in .gitignore"
    example = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "-q", "compose/.env.example"], check=False
    )
    assert example.returncode == 1, "compose/.env.example must stay tracked"
