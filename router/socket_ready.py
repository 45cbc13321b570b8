"""Whether a socket has something to read, for any file descriptor number.

``select.select`` only takes descriptors below ``FD_SETSIZE`` (1024): past that it raises
``ValueError``. A busy router (associations, spool files, database connections, a syslog
connection) can hold more descriptors than that, and then every new connection's first check
would fail — the node would close it as if the peer had sent nothing, and pynetdicom, whose
``AssociationSocket.ready`` calls ``select.select``, would take every association's socket for
closed (its peers read "Peer aborted Association"). ``poll`` has no such limit.

:func:`readable_within` is the check the router's own code uses; :func:`poll_pynetdicom_sockets`
makes pynetdicom's sockets use it too (once per process, before any association).
"""

from __future__ import annotations

import select
import ssl
import threading
from typing import Any

_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL
_installed = threading.Lock()
_done = False


def readable_within(sock: Any, timeout_s: float) -> bool:
    """True when ``sock`` has data (or an end: a close, an error) within ``timeout_s`` seconds.

    Raises ``OSError`` or ``ValueError`` for a socket already closed (no descriptor), as
    ``select.select`` did, so callers keep one way to see a socket gone under them.
    """
    poller = select.poll()
    poller.register(sock, _READABLE)
    return bool(poller.poll(max(timeout_s, 0.0) * 1000.0))


def poll_pynetdicom_sockets() -> None:
    """Replace ``pynetdicom.transport.AssociationSocket.ready`` by the same check made with
    ``poll``; otherwise unchanged (a socket that cannot be checked is a closed connection,
    Evt17; a TLS socket with buffered records is ready)."""
    global _done
    with _installed:
        if _done:
            return
        from pynetdicom.transport import AssociationSocket

        def ready(self: Any) -> bool:
            if self.socket is None or self._is_connected is False:
                return False
            try:
                has_data = readable_within(self.socket, 0)
            except (OSError, ValueError):
                self.event_queue.put("Evt17")
                return False
            if isinstance(self.socket, ssl.SSLSocket):
                return has_data or bool(self.socket.pending())
            return has_data

        AssociationSocket.ready = property(ready)  # type: ignore[assignment,method-assign]
        _done = True
