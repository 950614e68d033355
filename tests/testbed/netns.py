"""Sockets inside the bed's network namespaces, made from this process.

A socket belongs to the network namespace it was created in, whatever thread uses it later.
A short-lived thread joins the namespace (setns affects only the calling thread), creates and
binds the socket, and ends; the caller serves on the socket from wherever it likes. That is how
a test puts an HTTP server "behind a pod IP" without a subprocess.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

from .local import BedError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def listening_socket(netns: str, ip: str, port: int = 0, backlog: int = 64) -> socket.socket:
    """A TCP socket listening on ip:port inside network namespace `netns`."""
    result: dict = {}

    def create() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
            sock.listen(backlog)
            result["socket"] = sock
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=create, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise BedError(f"cannot listen on {ip}:{port} in network namespace {netns}: {result['error']}")
    return result["socket"]
