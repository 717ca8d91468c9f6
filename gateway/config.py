"""The gateway's configuration file (TOML), typed.

Every key has a default except ``app.model``; relative paths are taken relative to the folder of the
configuration file. An example with every key is in README.md ("Deployment with a PACS"). A password
can be given inline (``password``) or, better, in a file readable by the service only (``password_file``).

Problems are raised as :class:`ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import logging
import sys
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from gateway.jobs import RetryPolicy
from gateway.rules import SeriesRules

logger = logging.getLogger(__name__)


class ConfigError(Exception):
    """The configuration file is missing, unreadable or has a wrong key or value (one-line message)."""


@dataclass(frozen=True)
class OrthancSettings:
    """Where the PACS is: Orthanc's REST root, its DICOMweb root (a path under it), HTTP basic auth."""

    url: str = "http://127.0.0.1:8042"
    username: str | None = None
    password: str | None = None
    dicomweb_root: str = "/dicom-web"
    timeout_s: float = 120.0


@dataclass(frozen=True)
class WatchSettings:
    """``watch``: how often Orthanc's change feed is read (seconds) and where to start the first time
    (``now``: only studies that become stable from now on; ``beginning``: every study in the feed)."""

    poll_interval_s: float = 2.0
    start_at: Literal["now", "beginning"] = "now"


@dataclass(frozen=True)
class ReceiveSettings:
    """``receive``: the C-STORE receiver. A study is queued once no image of it arrived for ``quiet_s``
    seconds and no association still sends it. ``allowed_calling_aets`` empty: any caller.

    ``host`` is the address listened on: loopback by default, so that nothing outside the machine can
    send images until the receiver is opened on purpose (``host = "0.0.0.0"`` or the address of one
    interface, best with ``allowed_calling_aets`` set)."""

    aet: str = "FEMURGW"
    host: str = "127.0.0.1"
    port: int = 11112
    spool: Path = Path("spool")
    quiet_s: float = 10.0
    allowed_calling_aets: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResultSettings:
    """Where the SEG and SR go: ``stow`` to the DICOMweb server of ``[orthanc]``, or ``cstore`` to
    ``host``:``port`` (called AE title ``aet``, calling AE title ``calling_aet``)."""

    method: Literal["stow", "cstore"] = "stow"
    host: str = "127.0.0.1"
    port: int = 4242
    aet: str = "ORTHANC"
    calling_aet: str = "FEMURGW"


@dataclass(frozen=True)
class AppSettings:
    """How the application is run: ``command`` (default: this Python, ``-m app``) gets ``-i -o -m``;
    ``timeout_s`` per run (seconds); ``device`` and ``mirroring`` become FEMUR_LESION_DEVICE and
    FEMUR_LESION_MIRRORING; ``env`` adds variables."""

    model: Path = Path()
    command: tuple[str, ...] = (sys.executable, "-m", "app")
    timeout_s: float = 3600.0
    device: str = "auto"
    mirroring: bool = True
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueSettings:
    """The job queue (SQLite file ``database``), the workers' scratch folder ``work_dir``, the number
    of worker threads, and the retry policy (attempts, backoff in seconds, lease in seconds)."""

    database: Path = Path("gateway.sqlite")
    work_dir: Path = Path("work")
    workers: int = 1
    max_attempts: int = 4
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0
    lease_s: float = 120.0

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, backoff_base_s=self.backoff_base_s,
                           backoff_max_s=self.backoff_max_s, lease_s=self.lease_s)


@dataclass(frozen=True)
class GatewayConfig:
    """The whole configuration."""

    orthanc: OrthancSettings
    watch: WatchSettings
    receive: ReceiveSettings
    results: ResultSettings
    app: AppSettings
    queue: QueueSettings
    rules: SeriesRules


_SECTIONS: dict[str, type] = {"orthanc": OrthancSettings, "watch": WatchSettings, "receive": ReceiveSettings,
                              "results": ResultSettings, "app": AppSettings, "queue": QueueSettings,
                              "rules": SeriesRules}
_PATH_KEYS = {("receive", "spool"), ("app", "model"), ("queue", "database"), ("queue", "work_dir")}


def load_config(path: Path | str) -> GatewayConfig:
    """Read and check a configuration file; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read the configuration file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {path} is not valid TOML: {error}") from None
    return config_from_mapping(data, base=path.parent)


def config_from_mapping(data: dict[str, Any], *, base: Path) -> GatewayConfig:
    """Build the configuration from parsed TOML; relative paths are resolved against ``base``."""
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) in the configuration: {', '.join(sorted(unknown))}")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = dict(data.get(name, {}))
        if not isinstance(data.get(name, {}), dict):
            raise ConfigError(f"[{name}] must be a table")
        if name == "orthanc" and "password_file" in values:
            password_file = _resolve(base, values.pop("password_file"))
            try:
                values["password"] = password_file.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ConfigError(f"orthanc.password_file: cannot read {password_file}: "
                                  f"{error.strerror or error}") from None
        known = {f.name for f in fields(cls) if f.init}
        extra = set(values) - known
        if extra:
            raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(extra))}")
        for key in list(values):
            if (name, key) in _PATH_KEYS:
                values[key] = _resolve(base, values[key])
            elif isinstance(values[key], list):
                values[key] = tuple(values[key])
        try:
            section = cls(**values)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"[{name}]: {error}") from None
        # Default paths too are relative to the configuration file, never to the working directory.
        defaults = {key: _resolve(base, str(getattr(section, key))) for (sec, key) in _PATH_KEYS
                    if sec == name and key not in values and getattr(section, key) != Path()}
        sections[name] = replace(section, **defaults) if defaults else section
    config = GatewayConfig(**sections)
    _check(config)
    return config


def _resolve(base: Path, value: object) -> Path:
    if not isinstance(value, str):
        raise ConfigError(f"expected a path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _check(config: GatewayConfig) -> None:
    if config.app.model == Path():
        raise ConfigError("app.model is required: the lesion model folder the application runs")
    if config.watch.start_at not in ("now", "beginning"):
        raise ConfigError(f"watch.start_at must be 'now' or 'beginning', not {config.watch.start_at!r}")
    if config.results.method not in ("stow", "cstore"):
        raise ConfigError(f"results.method must be 'stow' or 'cstore', not {config.results.method!r}")
    if config.queue.workers < 1 or config.queue.max_attempts < 1:
        raise ConfigError("queue.workers and queue.max_attempts must be at least 1")
    if config.queue.lease_s <= 0 or config.app.timeout_s <= 0:
        raise ConfigError("queue.lease_s and app.timeout_s must be positive")
    if not config.app.command:
        raise ConfigError("app.command must not be empty")
    if (config.orthanc.username is None) != (config.orthanc.password is None):
        raise ConfigError("orthanc.username and orthanc.password (or password_file) go together")
