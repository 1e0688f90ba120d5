"""The container image's Dockerfile, kept in step with the package and the Helm chart.

No container engine runs here, so the image is not built; instead the Dockerfile is parsed and
what the chart and the code rely on is checked against it: the command (`rollbackd run`, a real
subcommand of the real entry point), the unprivileged user the chart's securityContext names, the
configuration path the chart mounts and ROLLBACKD_CONFIG, the HTTP port, the data directory the
store writes to, the multi-stage split (no build tools in the final image) and the build context
that .dockerignore lets through.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollbackd.cli import build_parser
from rollbackd.config.loader import CONFIG_ENV
from rollbackd.config.settings import HttpSettings, StoreSettings
from tests.test_helm_chart import (
    config_map_of,
    container_of,
    default_values,
    env_of,
    helm,
    mounts_by_path,
    one,
    render,
)

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

__all__ = ["helm"]  # the Helm engine fixture, shared with tests/test_helm_chart.py


@dataclass
class Stage:
    """One ``FROM`` stage: its base image (ARGs resolved), name and instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def last(self, instruction: str) -> str:
        found = self.all(instruction)
        assert found, f"stage {self.name or self.base} has no {instruction}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                values[key] = value
        return values

    def args(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ARG"):
            key, _, value = args.partition("=")
            values[key.strip()] = value.strip()
        return values


def _logical_lines(text: str) -> list[str]:
    """Instructions one per line: comments dropped, backslash continuations joined."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued instruction"
    return lines


@functools.cache
def stages() -> tuple[Stage, ...]:
    global_args: dict[str, str] = {}
    found: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text(encoding="utf-8")):
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        args = args.strip()
        if instruction == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda match: global_args[match.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base=base, name=name))
        elif not found:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            found[-1].instructions.append((instruction, args))
    return tuple(found)


def final() -> Stage:
    return stages()[-1]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) instruction argument; shell form fails the test."""
    value = json.loads(args)
    assert isinstance(value, list), f"not in exec form: {args}"
    assert all(isinstance(item, str) for item in value), args
    return value


# --- the build -----------------------------------------------------------------------------------


def test_multi_stage_build_on_slim_python_311() -> None:
    assert len(stages()) >= 2
    build, runtime = stages()[0], final()
    for stage in (build, runtime):
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base), stage.base
    assert runtime.name == "runtime"
    # The final image takes the installed virtual environment from the build stage, nothing else.
    copies_from_build = [args for args in runtime.all("COPY") if args.startswith(f"--from={build.name} ")]
    assert copies_from_build == [f"--from={build.name} /opt/rollbackd /opt/rollbackd"]
    assert any("venv /opt/rollbackd" in run for run in build.all("RUN"))
    assert any(re.search(r"/opt/rollbackd/bin/pip install \.( |$)", run) for run in build.all("RUN"))


def test_final_image_has_no_build_tools() -> None:
    for run in final().all("RUN"):
        for tool in ("apt-get install", "build-essential", "gcc", "make ", "pip install", "git "):
            assert tool not in run, f"the final stage installs or uses {tool!r}: {run}"
    build_runs = stages()[0].all("RUN")
    assert any("build-essential" in run for run in build_runs), "compilers belong to the build stage"


def test_entrypoint_is_rollbackd_run(helm: Any) -> None:
    runtime = final()
    entrypoint = exec_form(runtime.last("ENTRYPOINT"))
    command = exec_form(runtime.last("CMD"))
    assert entrypoint == ["rollbackd"]
    assert command == ["run"]
    # "rollbackd" is the package's console script, on PATH from the copied virtual environment.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["rollbackd"] == "rollbackd.cli:main"
    assert runtime.env()["PATH"].split(":")[0] == "/opt/rollbackd/bin"
    # `run` is a real subcommand, and the chart runs the same one.
    assert build_parser().parse_args(command).command == "run"
    chart_args = container_of(render(helm))["args"]
    assert chart_args == command
    assert "command" not in container_of(render(helm)), "the chart must keep the image's entrypoint"


def test_runs_as_the_user_the_chart_names(helm: Any) -> None:
    runtime = final()
    user = runtime.last("USER")
    assert re.fullmatch(r"\d+:\d+", user), "a numeric user, so that runAsNonRoot can be checked"
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0
    assert gid != 0
    args = runtime.args()
    assert (int(args["ROLLBACKD_UID"]), int(args["ROLLBACKD_GID"])) == (uid, gid)
    assert any('--uid "${ROLLBACKD_UID}"' in run for run in runtime.all("RUN"))

    values = default_values()
    assert values["podSecurityContext"]["runAsUser"] == uid
    assert values["podSecurityContext"]["runAsGroup"] == gid
    assert values["podSecurityContext"]["fsGroup"] == gid
    assert values["securityContext"]["runAsUser"] == uid
    pod = one(render(helm), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == uid
    assert container_of(render(helm))["securityContext"]["runAsUser"] == uid


def test_configuration_path_matches_the_chart(helm: Any) -> None:
    runtime = final()
    path = runtime.env()[CONFIG_ENV]
    assert path == "/etc/rollbackd/rollbackd.yaml"
    assert any("install -d -m 0755 /etc/rollbackd" in run for run in runtime.all("RUN"))
    objects = render(helm)
    container = container_of(objects)
    assert env_of(container)[CONFIG_ENV]["value"] == path
    directory, _, name = path.rpartition("/")
    mount = mounts_by_path(container)[directory]
    assert mount["readOnly"] is True
    assert name in config_map_of(objects)["data"]


def test_port_matches_the_configuration_and_the_chart(helm: Any) -> None:
    exposed = [port for args in final().all("EXPOSE") for port in args.split()]
    assert exposed == ["8080"]
    port = int(exposed[0])
    assert HttpSettings().port == port
    assert default_values()["config"]["http"]["port"] == port
    objects = render(helm)
    assert container_of(objects)["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == port


def test_data_directory_is_where_the_store_writes(helm: Any) -> None:
    runtime = final()
    volumes = exec_form(runtime.last("VOLUME"))
    assert volumes == ["/var/lib/rollbackd"]
    data_dir = volumes[0]
    assert StoreSettings().data_dir == data_dir
    assert runtime.last("WORKDIR") == data_dir
    assert runtime.env()["HOME"] == data_dir
    owned = f'-o "${{ROLLBACKD_UID}}" -g "${{ROLLBACKD_GID}}" {data_dir}'
    assert any(owned in run for run in runtime.all("RUN")), "the data directory belongs to the user"
    mounts = mounts_by_path(container_of(render(helm)))
    assert not mounts[data_dir].get("readOnly")
    assert not mounts["/tmp"].get("readOnly")


def test_bytecode_is_compiled_at_build_time() -> None:
    """The root filesystem is read-only in the pod: nothing may need writing __pycache__."""
    assert final().env()["PYTHONDONTWRITEBYTECODE"] == "1"
    assert not any("--no-compile" in run for run in stages()[0].all("RUN"))


def test_the_image_runs_optimized_from_bytecode_compiled_for_it() -> None:
    """PYTHONOPTIMIZE=2 reads *.opt-2.pyc files: without them every start would compile the
    sources in memory (more memory, not less)."""
    level = final().env()["PYTHONOPTIMIZE"]
    runs = " ".join(stages()[0].all("RUN"))
    compiled = re.search(r"python (-O+) -m compileall\b[^&]*/opt/rollbackd", runs)
    assert compiled is not None, "the build does not compile the venv's optimized bytecode"
    assert len(compiled.group(1)) - 1 == int(level)


# --- the build context ---------------------------------------------------------------------------


def _ignore_patterns() -> list[tuple[bool, str]]:
    patterns: list[tuple[bool, str]] = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        patterns.append((negated, line.removeprefix("!").strip("/")))
    return patterns


def ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern that matches the
    path or one of its parent directories decides; ``!`` patterns bring paths back."""
    parts = path.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    result = False
    for negated, pattern in _ignore_patterns():
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            result = not negated
    return result


def test_build_context_holds_what_the_build_copies() -> None:
    sources = []
    for stage in stages():
        for args in stage.all("COPY"):
            words = args.split()
            if words[0].startswith("--from="):
                continue
            sources.extend(words[:-1])
    assert sorted(sources) == ["README.md", "pyproject.toml", "rollbackd"]
    for source in sources:
        assert (REPO / source).exists(), source
        assert not ignored(source), f"{source} is copied by the Dockerfile but left out by .dockerignore"
    # What pyproject.toml builds from is in the context too.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert not ignored(pyproject["project"]["readme"])
    for module in ("rollbackd/__init__.py", "rollbackd/cli.py", "rollbackd/py.typed",
                   "rollbackd/daemon/main.py"):
        assert not ignored(module), module


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/HEAD", "tests/test_dockerfile.py", "helm/rollbackd/values.yaml",
     "bench/run_all.py", "rollbackd/__pycache__/cli.cpython-311.pyc", ".env", "rollbackd.db"],
)
def test_build_context_leaves_out_everything_else(path: str) -> None:
    assert ignored(path)


def test_chart_values_name_the_image_this_file_builds() -> None:
    chart = yaml.safe_load((REPO / "helm" / "rollbackd" / "Chart.yaml").read_text(encoding="utf-8"))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    # The image's default tag is the chart's appVersion: the version the image's package carries.
    assert chart["appVersion"] == pyproject["project"]["version"]
    assert default_values()["image"]["repository"] == "rollbackd"
    assert "docker build -t rollbackd:" in DOCKERFILE.read_text(encoding="utf-8")
