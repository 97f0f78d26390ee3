"""compose.yaml, checked as far as it can be without a Docker engine (there is none on these machines):
it parses, its services are the README's Deployment, every command is one the README runs and the
program it names accepts, and the environment it sets is the settings the README documents."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands, load_command_class

from tests.conftest import ROOT

OUR_SERVICES = ("migrate", "web", "worker")


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def readme_commands() -> set[str]:
    """The command lines of the Deployment section's shell blocks (comments and prompts dropped)."""
    lines = set()
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", readme_section("Deployment"), flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.add(line)
    return lines


def command_of(name: str) -> list[str]:
    command = compose()["services"][name]["command"]
    assert isinstance(command, list), f"{name}: exec form, so the program is PID 1 and gets docker stop's SIGTERM"
    return command


def test_compose_has_the_database_the_broker_the_web_server_and_workers():
    services = compose()["services"]

    assert set(services) == {"db", "redis", "migrate", "web", "worker"}
    assert services["db"]["image"].startswith("postgres:") and services["redis"]["image"].startswith("redis:")
    assert "replicas" in services["worker"]["deploy"]
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on {needed}, which is not a service"


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_each_service_runs_a_command_the_readme_runs(service):
    assert shlex.join(command_of(service)) in readme_commands()


@pytest.mark.parametrize("service", ["migrate", "worker"])
def test_manage_py_knows_each_command_and_takes_its_arguments(service):
    python, manage, name, *args = command_of(service)

    assert (python, manage) == ("python", "manage.py")
    assert name in get_commands()
    command = load_command_class(get_commands()[name], name)
    command.create_parser("manage.py", name).parse_args(args)  # exits (SystemExit) on an unknown argument


def test_gunicorn_takes_the_web_command_and_its_app_is_our_wsgi_application():
    from gunicorn.config import Config

    program, *args = command_of("web")
    parsed = Config().parser().parse_args(args)

    assert program == "gunicorn"
    assert parsed.args == ["uploader_site.wsgi"]
    from uploader_site.wsgi import application

    assert callable(application)
    assert "gunicorn==" in (ROOT / "requirements.txt").read_text()


def test_the_image_runs_only_commands_manage_py_knows():
    runs = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if "manage.py" in line]

    assert runs, "the image collects its static files"
    for line in runs:
        name = line.split("manage.py", 1)[1].split()[0]
        assert name in get_commands(), line


def test_the_services_share_one_database_one_broker_and_one_cluster_name():
    services = compose()["services"]
    envs = [services[name]["environment"] for name in OUR_SERVICES]

    for key in ("DATABASE_URL", "REDIS_URL", "Q_CLUSTER_NAME"):
        assert len({env[key] for env in envs}) == 1, key
    assert envs[0]["DATABASE_URL"].split("@")[1] == "db:5432/uploader"
    assert envs[0]["REDIS_URL"].startswith("redis://redis:6379/")


def test_every_variable_the_services_set_is_a_documented_setting():
    services = compose()["services"]
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.M))

    for name in OUR_SERVICES:
        assert set(services[name]["environment"]) <= documented, name
