"""The two Dockerfiles parse, pin every base image and download, and end as a non-root user.

hadolint is not available here, so a small parser reads the instructions
(comments, parser directives, line continuations, ARG defaults and their
substitution) and the tests check what matters for these images.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .manifests import DEPLOY, REPO

DOCKERFILES = {"poold": DEPLOY / "Dockerfile", "runner": DEPLOY / "runner" / "Dockerfile"}
INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
                "LABEL", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}


@dataclass
class Stage:
    base: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]


class DockerfileError(Exception):
    pass


def logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and current):
            continue  # comments (and blank lines inside a continuation) do not end an instruction
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        raise DockerfileError("the file ends inside a line continuation")
    return lines


def substitute(value: str, args: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in args:
            raise DockerfileError(f"${name} is not a declared ARG")
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, value)


def parse(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword not in INSTRUCTIONS:
            raise DockerfileError(f"unknown instruction {keyword!r} in {line!r}")
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            if len(parts) not in (1, 3):
                raise DockerfileError(f"bad FROM: {line!r}")
            stages.append(Stage(base=substitute(parts[0], global_args), name=name))
        elif keyword == "ARG":
            arg, _, default = rest.partition("=")
            if not stages:
                global_args[arg] = default
            else:  # inside a stage: re-declare a global ARG, or a new one
                value = default or global_args.get(arg)
                if value is None:
                    raise DockerfileError(f"ARG {arg} has no value")
                stages[-1].args[arg] = value
        elif not stages:
            raise DockerfileError(f"{keyword} before the first FROM")
        else:
            stages[-1].instructions.append((keyword, rest))
    if not stages:
        raise DockerfileError("no FROM")
    return Dockerfile(global_args=global_args, stages=stages)


def image_pinned(image: str) -> bool:
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in {"", "latest"} and bool(
        re.search(r"\d", tag))


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    name: str = request.param
    return name, parse(DOCKERFILES[name].read_text())


def test_parser_understands_the_syntax() -> None:
    parsed = parse(
        "# syntax=docker/dockerfile:1\nARG BASE=debian:12.5-slim\nFROM ${BASE} AS a\n"
        "RUN echo one \\\n  # a comment inside\n  && echo two\nFROM a\nUSER 10001\n"
    )
    assert [s.base for s in parsed.stages] == ["debian:12.5-slim", "a"]
    assert [" ".join(r.split()) for r in parsed.stages[0].all("RUN")] == [
        "echo one && echo two"]
    with pytest.raises(DockerfileError):
        parse("FROM $NOPE\n")
    with pytest.raises(DockerfileError):
        parse("FROM x:1\nRUNN true\n")
    assert not image_pinned("python:latest")
    assert not image_pinned("python")
    assert not image_pinned("localhost:5000/python")
    assert image_pinned("python:3.11.13-slim-bookworm")


def test_multi_stage_with_pinned_bases(dockerfile: tuple[str, Dockerfile]) -> None:
    name, parsed = dockerfile
    assert len(parsed.stages) >= 2, f"{name}: build in one stage, run in another"
    names = {s.name for s in parsed.stages if s.name}
    for stage in parsed.stages:
        if stage.base in names:
            continue
        assert image_pinned(stage.base), f"{name}: base image {stage.base} is not pinned"
        tag = stage.base.rpartition(":")[2]
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{name}: pin a patch release, not {tag}"


def test_runs_as_non_root(dockerfile: tuple[str, Dockerfile]) -> None:
    name, parsed = dockerfile
    final = parsed.stages[-1]
    users = final.all("USER")
    assert users, f"{name}: the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in {"0", "root"}, f"{name}: runs as {user}"
    assert user == "10001", f"{name}: the pod templates run as uid 10001, the image as {user}"
    last_user = max(i for i, (kw, _) in enumerate(final.instructions) if kw == "USER")
    after = [kw for kw, _ in final.instructions[last_user + 1:]]
    assert "RUN" not in after, f"{name}: RUN after USER would run as the unprivileged user"


def test_python_dependencies_are_pinned(dockerfile: tuple[str, Dockerfile]) -> None:
    name, parsed = dockerfile
    installs = [r for s in parsed.stages for r in s.all("RUN") if "pip install" in r]
    assert installs, f"{name}: installs no Python packages"
    for run in installs:
        assert "--constraint constraints.txt" in run, f"{name}: pip install without the pins"
    constraints = (DEPLOY / "constraints.txt").read_text().splitlines()
    pins = [line for line in constraints if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[a-z0-9_.\-]+==[\w.]+", p) for p in pins)


def test_entrypoints_match_the_manifests(dockerfile: tuple[str, Dockerfile]) -> None:
    name, parsed = dockerfile
    final = parsed.stages[-1]
    entry = shlex.split(final.all("ENTRYPOINT")[-1].strip("[]").replace(",", " "))
    assert entry == ['"poold"'] or entry == ["poold"]
    expose = final.all("EXPOSE")[-1]
    assert expose == {"poold": "8080", "runner": "8081"}[name]


def test_copies_only_what_exists(dockerfile: tuple[str, Dockerfile]) -> None:
    """Build context is the repository root: every COPY source must be there."""
    _, parsed = dockerfile
    for stage in parsed.stages:
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = copy.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_wasmedge_is_a_pinned_verified_release() -> None:
    parsed = parse(DOCKERFILES["runner"].read_text())
    version = parsed.global_args["WASMEDGE_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"WASMEDGE_VERSION {version!r} is not pinned"
    checksum = parsed.global_args["WASMEDGE_SHA256"]
    assert re.fullmatch(r"[0-9a-f]{64}", checksum), "WASMEDGE_SHA256 must be a sha256"
    (stage,) = [s for s in parsed.stages if s.name == "wasmedge"]
    assert stage.args["WASMEDGE_SHA256"] == checksum
    (download,) = stage.all("RUN")
    assert "releases/download/${WASMEDGE_VERSION}/" in download
    verify = download.index("sha256sum -c")
    assert verify < download.index("tar -x"), "verify the tarball before unpacking it"
    final = parsed.stages[-1]
    assert any("--from=wasmedge" in c for c in final.all("COPY"))
    (check,) = [r for r in final.all("RUN") if "wasmedge --version" in r]
    assert "env -i PATH=" in check, (
        "run wasmedge once in the final image with only PATH, as the agent does, so a "
        "library it cannot find fails the build"
    )
    assert "ldconfig" in check
    assert not any("LD_LIBRARY_PATH" in e for e in final.all("ENV")), (
        "the agent does not pass LD_LIBRARY_PATH to wasmedge"
    )


def test_dockerignore_beside_each_dockerfile() -> None:
    for path in DOCKERFILES.values():
        ignore = Path(f"{path}.dockerignore")
        assert ignore.exists(), f"{ignore} keeps .venv and .git out of the build context"
        rules = [r for r in ignore.read_text().splitlines() if r and not r.startswith("#")]
        assert rules[0] == "*", f"{ignore}: ignore everything, then allow what the build copies"
