"""``actor-system init``: a new project of one's own actors, ready to test and deploy.

The project's files come from ``actor_system/project/``: the actor module, its Lambda entry,
a test on the manual clock, ``serverless.yml``, ``package.json`` with the framework pinned and
``requirements.txt`` naming this library. The repository's own ``serverless.yml`` is rendered
from the same template (``python -m actor_system.scaffold > serverless.yml``), so the
reference deployment and every new project share one set of functions, queues and IAM.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import keyword
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from actor_system.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

TEMPLATE = Path(__file__).resolve().parent / "project"
DISTRIBUTION = "actor-system"

_SERVICE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,39}$")
# Module names that would hide a package the project needs: the standard library's, this
# library's and its dependencies' (and boto3's, on Lambda), and the project's own folders.
_TAKEN = {
    *sys.stdlib_module_names,
    *("actor_system", "redis", "msgpack", "pydantic", "pydantic_core", "click", "fakeredis"),
    *("lupa", "sortedcontainers", "annotated_types", "typing_extensions", "typing_inspection"),
    *("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "pytest"),
    *("tests", "wheels", "node_modules"),
}


@dataclass(frozen=True, slots=True)
class Project:
    """What a rendered ``serverless.yml`` names: the service, the Lambda handler, the
    package's patterns and the requirements file."""

    service: str
    handler: str
    patterns: tuple[str, ...]
    app: str  # the actor types, for the long-work worker (ACTOR_SYSTEM_APP)
    requirements: str = "requirements.txt"
    generated: str = ""  # a comment line saying where the file comes from

    def serverless_yml(self) -> str:
        lines = "".join(f"    - {p}\n" for p in self.patterns)
        return render(
            (TEMPLATE / "serverless.yml").read_text(),
            service=self.service,
            handler=self.handler,
            patterns=lines,
            requirements=self.requirements,
            generated=self.generated,
            app=self.app,
            dashboard=self.handler.rsplit(".", 1)[0] + ".dashboard",
        )


# The repository's reference deployment: the example actors, the library as source.
REFERENCE = Project(
    service="actor-system",
    handler="deploy/drain.handler",
    patterns=(
        "actor_system/**           # actor_system/adapters links to adapters/: packaged there",
        "examples/**",
        "deploy/drain.py",
    ),
    app="deploy.drain:ACTORS",
    requirements="deploy/requirements.txt",
    generated=(
        "# Rendered from actor_system/project/serverless.yml (the template `actor-system init`\n"
        "# writes new projects from): python -m actor_system.scaffold > serverless.yml\n"
    ),
)


def render(text: str, **values: str) -> str:
    """``text`` with each ``{{name}}`` replaced; a name left over is an error."""
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    left = re.search(r"\{\{(\w+)\}\}", text)
    if left:
        raise ConfigError(f"the project template names {{{{{left[1]}}}}}, which has no value")
    return text


def module_name(directory: Path) -> str:
    """The Python package a project folder gets by default: its name, in snake case."""
    return re.sub(r"[^0-9a-zA-Z_]+", "_", directory.name).strip("_").lower()


def check_names(module: str, service: str) -> None:
    if not module.isidentifier() or keyword.iskeyword(module) or module != module.lower():
        raise ConfigError(f"{module!r} is not a lower-case Python package name; give --module")
    if module in _TAKEN:
        raise ConfigError(f"a package named {module!r} would hide another one; give --module")
    if not _SERVICE.match(service):
        raise ConfigError(
            f"{service!r} is not a service name (a letter, then letters, digits or '-', "
            "40 at most); give --service"
        )


def init(directory: Path, *, module: str | None = None, service: str | None = None) -> Project:
    """Write a new project into ``directory`` (absent or empty); returns what it names."""
    directory = directory.resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory} exists and is not an empty folder")
    module = module or module_name(directory)
    service = service or module.replace("_", "-")
    check_names(module, service)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return _write(directory, module, service)
    except BaseException:
        # Nothing half-written stays behind: the folder may be given to init again.
        for path in sorted(directory.rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        if created:
            directory.rmdir()
        raise


def _write(directory: Path, module: str, service: str) -> Project:
    wheel = build_wheel(directory / "wheels")
    handler = f"{module}/handler.handler"
    app = f"{module}.actors:ACTORS"
    project = Project(service=service, handler=handler, patterns=(f"{module}/**",), app=app)
    values = {"module": module, "service": service, "library": f"./wheels/{wheel.name}"}
    for source, relative in _template_files():
        target = directory / relative.replace("app/", f"{module}/", 1)
        if relative in ("gitignore", "dockerignore"):
            target = directory / f".{relative}"
        target = target.with_name(target.name.removesuffix(".tmpl"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative == "serverless.yml":
            target.write_text(project.serverless_yml())
        elif relative in ("package.json", "package-lock.json"):
            target.write_text(_named_npm(source, service))
        else:
            target.write_text(render(source.read_text(), **values))
    return project


def _template_files() -> Iterator[tuple[Path, str]]:
    for path in sorted(TEMPLATE.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path, path.relative_to(TEMPLATE).as_posix()


def _named_npm(source: Path, service: str) -> str:
    """package.json or its lock, with the project's name."""
    data = json.loads(source.read_text())
    data["name"] = service
    if "" in data.get("packages", {}):
        data["packages"][""]["name"] = service
    return json.dumps(data, indent=2) + "\n"


def build_wheel(folder: Path) -> Path:
    """A wheel of the installed actor-system, for a project's requirements.txt to name until
    the library is published: its package files as installed and its metadata."""
    dist = importlib.metadata.distribution(DISTRIBUTION)
    version = dist.version
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO")  # a wheel; an egg-info
    if metadata is None:
        raise ConfigError(f"the installed {DISTRIBUTION} has no metadata to build a wheel from")
    stem = f"{DISTRIBUTION.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    package = Path(__file__).resolve().parent
    files: list[tuple[str, bytes]] = []
    for root, dirs, names in os.walk(package, followlinks=True):  # adapters/ is a link
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(root, name)
            name = f"actor_system/{path.relative_to(package).as_posix()}"
            files.append((name, path.read_bytes()))
    scripts = "[console_scripts]\nactor-system = actor_system.cli:main\n"
    files += [
        (f"{info}/METADATA", metadata.encode()),
        (f"{info}/WHEEL", _WHEEL.encode()),
        (f"{info}/entry_points.txt", scripts.encode()),
        (f"{info}/top_level.txt", b"actor_system\n"),
    ]
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files]
    record.append(f"{info}/RECORD,,")
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            info_ = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info_.external_attr = 0o644 << 16
            info_.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info_, data)
    return wheel


_WHEEL = (
    "Wheel-Version: 1.0\nGenerator: actor-system init\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
)


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


if __name__ == "__main__":
    sys.stdout.write(REFERENCE.serverless_yml())
