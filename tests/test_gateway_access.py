"""Access control of the gateway and of the Orthanc it is tested with.

* every service binds loopback by default: the C-STORE receiver's default address is 127.0.0.1 (in the
  settings, in a configuration file without a ``[receive]`` table, and on the port it really opens);
  the ``watch`` gateway opens no port at all (it has no HTTP endpoint: ``status`` and ``retry`` read the
  queue file); Orthanc started by the project answers no request from another address, even with the
  password;
* authentication is on by default: a request to Orthanc's REST API or DICOMweb (QIDO and STOW) without
  credentials, or with a wrong password, is refused with 401; the password of a local Orthanc is random
  unless given;
* what the gateway writes on disk is for its service user only: the queue database (0600) and the work
  and spool folders (0700).
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
import requests

from gateway.config import ReceiveSettings, config_from_mapping
from gateway.jobs import JobQueue
from gateway.orthanc_server import LocalOrthanc
from gateway.rules import SeriesRules
from gateway.scp import Receiver
from tests.gateway_support import start_gateway, start_orthanc, stop_gateway, wait_for, write_config


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                if family == socket.AF_INET:
                    raw = raw[::-1]
                else:  # four little-endian 32-bit words
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, or None."""
    for target in ("10.255.255.255", "192.0.2.255", "172.31.255.255"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((target, 9))  # no packet is sent: this only picks the outgoing interface
                address = str(probe.getsockname()[0])
            except OSError:
                continue
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return None


def test_the_receiver_binds_loopback_by_default(tmp_path: Path) -> None:
    assert ReceiveSettings().host == "127.0.0.1"
    config = config_from_mapping({"app": {"model": str(tmp_path)}}, base=tmp_path)
    assert config.receive.host == "127.0.0.1"
    with JobQueue(path=tmp_path / "jobs.sqlite") as queue:
        receiver = Receiver(settings=ReceiveSettings(port=0, spool=tmp_path / "spool"), queue=queue,
                            rules=SeriesRules())
        receiver.start()
        try:
            server = receiver._server
            assert server is not None and server.server_address[0] == "127.0.0.1"  # type: ignore[attr-defined]
        finally:
            receiver.stop()


@pytest.fixture
def pacs(tmp_path: Path) -> LocalOrthanc:
    yield from start_orthanc(tmp_path / "orthanc")


def test_orthanc_refuses_requests_without_the_right_credentials(pacs: LocalOrthanc) -> None:
    assert requests.get(pacs.url + "/system", auth=pacs.auth, timeout=10).status_code == 200
    for method, url in (("GET", pacs.url + "/system"), ("GET", pacs.url + "/changes"),
                        ("GET", pacs.dicomweb_url + "/studies"), ("POST", pacs.dicomweb_url + "/studies")):
        assert requests.request(method, url, timeout=10).status_code == 401, url
        assert requests.request(method, url, auth=(pacs.username, "wrong"), timeout=10).status_code == 401, url
    config = pacs.config()
    assert config["AuthenticationEnabled"] is True and config["RemoteAccessAllowed"] is False
    # No fixed password: two servers get different random ones.
    other = LocalOrthanc(folder=pacs.folder.parent / "other")
    assert other.password != pacs.password and len(pacs.password) >= 24


def test_orthanc_answers_no_other_address_than_loopback(pacs: LocalOrthanc) -> None:
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no address other than loopback")
    answer = requests.get(f"http://{address}:{pacs.http_port}/system", auth=pacs.auth, timeout=10)
    assert answer.status_code in (401, 403)


def test_the_gateway_opens_loopback_ports_only_and_keeps_its_files_private(pacs: LocalOrthanc,
                                                                           tmp_path: Path) -> None:
    # A configuration without a receive address: the defaults apply (port 0: any free port).
    config = write_config(tmp_path / "gateway.toml", pacs=pacs, model=tmp_path)
    text = config.read_text().replace('host = "127.0.0.1"\nport = 0', "port = 0")
    assert "host" not in text.split("[receive]")[1].split("[")[0]
    config.write_text(text)
    log = tmp_path / "gateway.log"
    for command in ("watch", "receive"):
        gateway = start_gateway(command, config, log)
        try:
            wait_for(lambda: log.read_text().count("gateway running") == (1 if command == "watch" else 2),
                     timeout_s=60, what="the gateway to start", log=log)
            listening = _listening(gateway.pid)
        finally:
            assert stop_gateway(gateway) == 0
        if command == "watch":
            assert listening == []  # no HTTP endpoint, no port
        else:
            assert listening and all(address == "127.0.0.1" for address, _ in listening), listening
    database = tmp_path / "gateway.sqlite"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    for folder in (tmp_path / "work", tmp_path / "spool"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
