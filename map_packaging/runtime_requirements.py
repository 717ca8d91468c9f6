"""The pip requirements of the MAP image: the runtime set with every package pinned.

The packager pip-installs ``<app_dir>/requirements.txt`` into the image and copies nothing else of
ours, so a ``-c constraints.txt`` line cannot work there. This module turns ``requirements.txt`` (the
runtime's direct needs) into its full dependency closure, each package pinned to the version in
``constraints.txt``, so that the image installs the same versions as the tested development
environment (torch 2.14.1, numpy 1.26.4, ...), and none of the annotation-server or test packages.

The closure is read from the metadata of the installed distributions (the development environment is
installed from the same constraints), with environment markers evaluated for the image's interpreter:
CPython 3.12 on Linux x86_64 (holoscan-cli 4.2.0's CUDA 13 Ubuntu 24.04 base image).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_PYTHON", "RequirementsError", "pinned_runtime_requirements", "read_pins"]

#: Marker environment of the MAP image's interpreter (python3 3.12.3 from Ubuntu 24.04, x86_64).
IMAGE_PYTHON: Mapping[str, str] = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "implementation_version": "3.12.3", "platform_python_implementation": "CPython", "os_name": "posix",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
    "platform_release": "", "platform_version": "",
}
# Installer tools: the image brings its own pip (and pip freeze never lists these), so they stay unpinned.
_INSTALLER_TOOLS = frozenset({"pip", "setuptools", "wheel"})
# Distributions `pip freeze` (hence `make lock`) never lists although they are installed: pinned at the
# installed version. argparse 1.4.0 comes with batchgenerators -> unittest2; the standard library's
# argparse still wins on import.
_NOT_LISTED_BY_FREEZE = frozenset({"argparse"})


class RequirementsError(ValueError):
    """A requirement cannot be pinned (one line naming the package)."""


def read_pins(constraints: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, keyed by canonical name (comments skipped)."""
    pins: dict[str, str] = {}
    for number, line in enumerate(constraints.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise RequirementsError(f"{constraints.name}:{number}: {error}") from None
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if len(exact) != 1:
            raise RequirementsError(f"{constraints.name}:{number}: '{line}' is not an exact pin (name==version)")
        pins[canonicalize_name(requirement.name)] = exact[0]
    return pins


def pinned_runtime_requirements(requirements: Path, constraints: Path,
                                environment: Mapping[str, str] = IMAGE_PYTHON) -> list[str]:
    """Every distribution the runtime needs, as sorted ``name==version`` lines.

    Parameters
    ----------
    requirements : Path
        The runtime's direct requirements (``requirements.txt``); each must be installed.
    constraints : Path
        The resolved pins (``constraints.txt``); every package of the closure must be pinned there,
        at the version installed here.
    environment : mapping
        Marker variables of the target interpreter (default: the MAP image's).

    Raises
    ------
    RequirementsError
        A package of the closure is not installed here, not pinned, or pinned at another version than
        the one installed or the one ``requirements.txt`` asks for.
    """
    pins = read_pins(constraints)
    roots = _read_requirements(requirements)
    for root in roots:
        name = canonicalize_name(root.name)
        if name in pins and root.specifier and not root.specifier.contains(pins[name], prereleases=True):
            raise RequirementsError(f"{requirements.name} asks for {root} but {constraints.name} pins "
                                    f"{name}=={pins[name]}")

    closure: dict[str, str] = {}
    pending: list[tuple[Requirement, frozenset[str]]] = [(r, frozenset()) for r in roots]
    visited: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement, parent_extras = pending.pop()
        if not _applies(requirement.marker, parent_extras, environment):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in visited:
            continue
        visited.add(key)
        if name in _INSTALLER_TOOLS:
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise RequirementsError(f"{name} (needed by the runtime on Python "
                                    f"{environment['python_version']}) is not installed here, so its "
                                    "version and dependencies are unknown; install the environment with "
                                    "`make venv`") from None
        installed = distribution.version
        if name not in pins and name in _NOT_LISTED_BY_FREEZE:
            pins[name] = installed
        if name not in pins:
            raise RequirementsError(f"{name} is needed by the runtime but not pinned in {constraints.name}; "
                                    "run `make lock`")
        if pins[name] != installed:
            raise RequirementsError(f"{name} is pinned at {pins[name]} in {constraints.name} but {installed} "
                                    "is installed; reinstall with `make venv`")
        closure[name] = installed
        extras = frozenset(requirement.extras)
        pending.extend((Requirement(line), extras) for line in distribution.requires or [])
    lines = [f"{name}=={version}" for name, version in sorted(closure.items())]
    logger.info("runtime closure: %d pinned distributions", len(lines))
    return lines


def _read_requirements(path: Path) -> list[Requirement]:
    requirements: list[Requirement] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if re.match(r"^-", line):  # -r/-c/--index-url: nothing the image could follow
            raise RequirementsError(f"{path.name}:{number}: option lines ('{line}') are not supported in the "
                                    "runtime requirements")
        try:
            requirements.append(Requirement(line))
        except InvalidRequirement as error:
            raise RequirementsError(f"{path.name}:{number}: {error}") from None
    return requirements


def _applies(marker: Marker | None, extras: frozenset[str], environment: Mapping[str, str]) -> bool:
    """Whether a requirement with ``marker`` applies on the target, asked for with ``extras``."""
    if marker is None:
        return True
    return any(marker.evaluate({**environment, "extra": extra}) for extra in (extras or {""}))
