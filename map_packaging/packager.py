"""Running the SDK's packager, ``monai-deploy package`` (holoscan-cli 4.2.0), on the staged folders.

With a docker engine the real command builds the image. Without one (``docker info`` fails) the same
packager code runs in this process up to the point where it would call ``docker buildx``: its two
builder calls in ``holoscan_cli.packager.container_builder`` are replaced, the build context it wrote
(Dockerfile, ``map/app.json``, ``map/pkg.json``, ``pip/requirements.txt``, ``app.config``, the app
folder) is copied out for inspection, and the packager is stopped there. Everything before that point,
including its reading of ``app.yaml``, its model scan and its Dockerfile template, is the real code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from map_packaging.folders import partial_folder, replace_folder

logger = logging.getLogger(__name__)

__all__ = ["CapturedContext", "PackagingError", "PackageRequest", "capture_build_context", "docker_engine_problem",
           "package_with_docker"]

#: holoscan-cli's copy of the base-image manifest it otherwise downloads from GitHub (Apache-2.0).
ARTIFACTS = Path(__file__).with_name("holoscan-cli-4.2.0-artifacts.json")
_DOCKER_TIMEOUT_S = 30
# The image's user must not be root (the Dockerfile's `useradd -u $UID` fails for 0); 1000 is the
# packager's own default for a user given no UID.
_FALLBACK_ID = 1000


class PackagingError(RuntimeError):
    """The packager refused the inputs or failed (one line)."""


@dataclass(frozen=True)
class PackageRequest:
    """What ``monai-deploy package`` is asked to build.

    Attributes
    ----------
    app_folder : Path
        The staged application folder (``__main__.py``, packages, ``requirements.txt``).
    config : Path
        ``app.yaml``.
    models : Path
        The staged models folder (one sub-folder per model).
    tag : str
        Image name and tag, e.g. ``femur-lesion-seg:0.1.0``.
    build_cache : Path
        Docker build cache folder (the packager's default is ``~/.holoscan_build_cache``).
    platform : str
        holoscan-cli platform, ``x86_64``.
    source : Path
        holoscan-cli's artifacts manifest (base images per SDK version), so nothing is downloaded.
    docs : Path, optional
        Documentation folder for ``/opt/holoscan/docs`` (the model card).
    """

    app_folder: Path
    config: Path
    models: Path
    tag: str
    build_cache: Path
    platform: str = "x86_64"
    source: Path = ARTIFACTS
    docs: Path | None = None

    def arguments(self) -> list[str]:
        """``package ...`` arguments of ``monai-deploy`` (without the program name)."""
        uid, gid = os.getuid(), os.getgid()
        return ["package", str(self.app_folder), "--config", str(self.config), "--models", str(self.models),
                "--tag", self.tag, "--platform", self.platform, "--sdk", "monai-deploy",
                "--source", str(self.source), "--build-cache", str(self.build_cache),
                "--uid", str(uid or _FALLBACK_ID), "--gid", str(gid if uid else _FALLBACK_ID),
                *(["--docs", str(self.docs)] if self.docs is not None else [])]


@dataclass
class CapturedContext:
    """The build context the packager handed to ``docker buildx``, copied to ``folder``.

    Attributes
    ----------
    folder : Path
        Copy of the context, without ``models/`` (listed in ``context-files.txt``).
    build : dict
        The arguments of the ``docker buildx build`` call that was not made (tags, platforms,
        build args; paths are the packager's temporary ones).
    """

    folder: Path
    build: dict[str, Any] = field(default_factory=dict)

    @property
    def image_tag(self) -> str:
        """The tag the packager gives the image (it appends the platform to the requested name)."""
        return str(self.build["tags"][0])

    @property
    def dockerfile(self) -> str:
        return (self.folder / "Dockerfile").read_text(encoding="utf-8")

    @property
    def app_json(self) -> dict[str, Any]:
        return json.loads((self.folder / "map" / "app.json").read_text(encoding="utf-8"))

    @property
    def pkg_json(self) -> dict[str, Any]:
        return json.loads((self.folder / "map" / "pkg.json").read_text(encoding="utf-8"))

    @property
    def files(self) -> list[str]:
        """Every file of the context, relative to it (models included)."""
        return (self.folder / "context-files.txt").read_text(encoding="utf-8").splitlines()


class _StopBeforeDocker(BaseException):
    """Raised from the replaced builder call: stops the packager (which catches only Exception) there."""


def docker_engine_problem() -> str | None:
    """Why no docker engine can build here, or None when ``docker info`` answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client on PATH"
    try:
        result = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                                timeout=_DOCKER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within {_DOCKER_TIMEOUT_S} s"
    if result.returncode != 0 or not result.stdout.strip():
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        return f"`docker info` failed: {lines[-1] if lines else f'exit status {result.returncode}'}"
    return None


def package_with_docker(request: PackageRequest, built_tag: str) -> None:
    """Build the image with the real ``monai-deploy package`` command (needs a docker engine).

    The packager names the image after the platform (``built_tag``, e.g.
    ``femur-lesion-seg-x64-workstation-dgpu-linux-amd64:0.1.0``, as captured by
    :func:`capture_build_context`); the image is also tagged ``request.tag`` so that deployments can use
    the short name.
    """
    command = [str(Path(sys.executable).with_name("monai-deploy")), *request.arguments()]
    logger.info("running %s", " ".join(command))
    if subprocess.run(command, check=False).returncode != 0:
        raise PackagingError(f"monai-deploy package failed for {request.tag}; its log above says why")
    if built_tag != request.tag:
        tagged = subprocess.run(["docker", "tag", built_tag, request.tag], capture_output=True, text=True,
                                check=False)
        if tagged.returncode != 0:
            raise PackagingError(f"docker tag {built_tag} {request.tag} failed: {' '.join(tagged.stderr.split())}")


def capture_build_context(request: PackageRequest, destination: Path) -> CapturedContext:
    """Run the packager in this process up to ``docker buildx`` and copy its build context to ``destination``.

    ``destination`` is replaced as a whole when the capture is complete.

    Raises
    ------
    PackagingError
        The packager rejected the inputs before reaching the build (its error message, one line).
    """
    from holoscan_cli.__main__ import parse_args
    from holoscan_cli.packager import container_builder
    from holoscan_cli.packager.packager import execute_package_command

    destination = Path(destination)
    partial = partial_folder(destination)
    captured = CapturedContext(folder=destination)

    def create_and_get_builder(name: str) -> str:
        return name  # no buildx builder to create without an engine

    def build_docker_image(**build: Any) -> None:
        context = Path(build["context_path"])
        shutil.copytree(context, partial, ignore=lambda folder, _: ["models"] if Path(folder) == context else [])
        listing = sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file())
        (partial / "context-files.txt").write_text("\n".join(listing) + "\n", encoding="utf-8")
        captured.build = {k: v for k, v in build.items() if k in ("tags", "platforms", "build_args", "file", "pull")}
        raise _StopBeforeDocker

    errors: list[str] = []
    with _replaced(container_builder, create_and_get_builder=create_and_get_builder,
                   build_docker_image=build_docker_image), _errors_of("packager", errors):
        args = parse_args(["monai-deploy", *request.arguments()])
        try:
            execute_package_command(args)
        except _StopBeforeDocker:
            partial.chmod(0o755)  # the packager's temporary folder was private to its user
            replace_folder(partial, destination)
            logger.info("captured the packager's build context in %s", destination)
            return captured
        except SystemExit:
            pass
    shutil.rmtree(partial, ignore_errors=True)
    reason = " ".join(" ".join(errors).split()) or "it stopped before writing a Dockerfile"
    raise PackagingError(f"monai-deploy package: {reason}")


@contextmanager
def _replaced(module: Any, **replacements: Any) -> Iterator[None]:
    saved = {name: getattr(module, name) for name in replacements}
    try:
        for name, value in replacements.items():
            setattr(module, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@contextmanager
def _errors_of(logger_name: str, messages: list[str]) -> Iterator[None]:
    """Collect the ERROR records of a logger (the packager reports its failures only there)."""

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.ERROR)
    target = logging.getLogger(logger_name)
    target.addHandler(handler)
    try:
        yield
    finally:
        target.removeHandler(handler)
