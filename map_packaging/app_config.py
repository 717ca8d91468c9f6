"""What ``app.yaml`` must say before the packager reads it.

holoscan-cli 4.2.0 (``packager/config_reader.py``) checks only that ``application.title`` and
``resources`` exist. It silently ignores the SDK examples' camel-case ``inputFormats`` /
``outputFormats`` (app.json then carries null formats) and does not look at ``resources`` at all,
although ``monai-deploy run`` later reserves that many GPUs and parses the memory sizes. This module
checks all of that up front, so that a bad ``app.yaml`` fails here with one line instead of producing a
package that misbehaves at deployment.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version

logger = logging.getLogger(__name__)

__all__ = ["AppConfig", "AppConfigError", "read_app_config"]

# The memory units holoscan-cli's runner converts (runner/resources.py); anything else makes
# `monai-deploy run` fail after the image was built.
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(Mi|MiB|Gi|GiB|MB|GB)$")
_CAMEL_CASE_FORMATS = ("inputFormats", "outputFormats")


class AppConfigError(ValueError):
    """``app.yaml`` is missing, unreadable or states something the packager cannot use (one line)."""


@dataclass(frozen=True)
class AppConfig:
    """The parts of ``app.yaml`` that end up in the MAP's manifests.

    Attributes
    ----------
    title, version : str
        ``application.title`` and ``application.version`` (the image tag's version).
    input_formats, output_formats : tuple of str
        ``application.input-formats`` / ``output-formats`` (app.json's ``input.formats``/``output.formats``).
    resources : dict
        ``resources`` as written (pkg.json's ``resources``): ``cpu`` (cores), ``gpu`` (count),
        ``memory`` and ``gpuMemory`` (sizes such as ``"8Gi"``).
    """

    title: str
    version: str
    input_formats: tuple[str, ...]
    output_formats: tuple[str, ...]
    resources: dict[str, Any]


def read_app_config(path: Path, *, expected_version: str | None = None) -> AppConfig:
    """Read and check ``app.yaml``.

    Parameters
    ----------
    path : Path
        The application configuration file.
    expected_version : str, optional
        The product's version (pyproject.toml); ``application.version`` must equal it, so that the
        image tag, app.json and the SEG/SR's software version agree.

    Raises
    ------
    AppConfigError
        With a one-line message naming the file and the problem.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise AppConfigError(f"{path}: cannot be read ({error.strerror or error})") from error
    except yaml.YAMLError as error:
        raise AppConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
    if not isinstance(document, dict):
        raise AppConfigError(f"{path}: expected a mapping with 'application' and 'resources'")

    application = _mapping(document, "application", path)
    for key in _CAMEL_CASE_FORMATS:
        if key in application:
            hyphenated = re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), key)
            raise AppConfigError(f"{path}: application.{key} is ignored by the packager; write '{hyphenated}'")
    title = application.get("title")
    if not isinstance(title, str) or not title.strip():
        raise AppConfigError(f"{path}: application.title is missing or empty")
    version = str(application.get("version", "")).strip()
    try:
        Version(version)
    except InvalidVersion:
        raise AppConfigError(f"{path}: application.version '{version}' is not a version (e.g. 0.1.0)") from None
    if expected_version is not None and version != expected_version:
        raise AppConfigError(f"{path}: application.version {version} differs from the product version "
                             f"{expected_version} in pyproject.toml")

    resources = _mapping(document, "resources", path)
    _check_resources(resources, path)
    config = AppConfig(title=title.strip(), version=version,
                       input_formats=_formats(application, "input-formats", path),
                       output_formats=_formats(application, "output-formats", path),
                       resources=dict(resources))
    logger.info("app.yaml: %s %s, resources %s", config.title, config.version, config.resources)
    return config


def _mapping(document: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = document.get(key)
    if not isinstance(value, dict) or not value:
        raise AppConfigError(f"{path}: '{key}' is missing or not a mapping")
    return value


def _formats(application: dict[str, Any], key: str, path: Path) -> tuple[str, ...]:
    value = application.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise AppConfigError(f"{path}: application.{key} must be a non-empty list of format names, e.g. [\"file\"]")
    return tuple(value)


def _check_resources(resources: dict[str, Any], path: Path) -> None:
    """CPU cores > 0, at least one GPU (the lesion model is meant to run on one), memory sizes in units
    the runner understands."""
    cpu = resources.get("cpu")
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0:
        raise AppConfigError(f"{path}: resources.cpu must be a number of cores > 0, not {cpu!r}")
    gpu = resources.get("gpu")
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 1:
        raise AppConfigError(f"{path}: resources.gpu must be a whole number of GPUs >= 1, not {gpu!r}")
    for key in ("memory", "gpuMemory"):
        size = resources.get(key)
        if not isinstance(size, str) or not _MEMORY.match(size.strip()):
            raise AppConfigError(f"{path}: resources.{key} must be a size such as '8Gi' "
                                 f"(units Mi, MiB, Gi, GiB, MB, GB), not {size!r}")
    shared = resources.get("sharedMemory")
    if shared is not None and (not isinstance(shared, str) or not _MEMORY.match(shared.strip())):
        raise AppConfigError(f"{path}: resources.sharedMemory must be a size such as '1Gi', not {shared!r}")
