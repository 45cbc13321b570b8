"""A router process holding more than 1024 file descriptors still takes and makes associations.

``select.select`` refuses descriptors past 1024; with it, the node closed every new connection
as silent and pynetdicom took every socket for closed ("Peer aborted Association" at the
sender). Both now check sockets with ``poll`` (``router.socket_ready``).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from router.deliver.dicom_send import Peer, echo
from router.socket_ready import readable_within
from testing.router_process import StartRouter
from testing.storescp import DCMTK_ENV

CONFIG = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "rules: []\n"
)


@pytest.fixture
def past_select_limit() -> Iterator[None]:
    """Hold descriptors until the next one opened is numbered above 1024."""
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:  # a soft limit under 1100: nothing to show here
        for fd in held:
            os.close(fd)
        pytest.skip(f"cannot open 1100 descriptors: {exc}")
    yield
    for fd in held:
        os.close(fd)


def test_readable_within_sees_data_and_silence_past_descriptor_1024(
    past_select_limit: None,
) -> None:
    left, right = socket.socketpair()
    with left, right:
        assert left.fileno() > 1024
        assert not readable_within(left, 0.05)
        right.sendall(b"x")
        assert readable_within(left, 1.0)
    with pytest.raises((OSError, ValueError)):
        readable_within(left, 0)  # closed: no descriptor


def test_node_answers_and_the_router_calls_out_past_descriptor_1024(
    start_router: StartRouter, past_select_limit: None
) -> None:
    router = start_router(CONFIG)
    answered = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "RADROUTER", "127.0.0.1", str(router.dicom_port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
    )
    assert answered.returncode == 0, answered.stderr
    # The router's own outgoing association (as dispatch and priors make them).
    assert echo(Peer("RADROUTER", "127.0.0.1", router.dicom_port, "RADROUTER_TEST", 10.0))
