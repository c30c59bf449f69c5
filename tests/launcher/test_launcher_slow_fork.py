"""A launcher that has taken a command's descriptors is forking its VM:
however slowly it then answers (a loaded host), the client waits for it and
does not also run the command itself, which would start the VM twice (or
fail because the first one holds its name)."""

from __future__ import annotations

import os
import socket
import threading
import time

from pocketvm.launcher import client
from pocketvm.launcher.protocol import LineReader, send, socket_path


def test_a_slow_answer_after_the_descriptors_is_waited_for(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    socket_path().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path()))
    server.listen(1)

    def slow_launcher() -> None:
        conn, _ = server.accept()
        reader = LineReader(conn)
        assert reader.read()["cmd"] == "launch"
        send(conn, {"send": "fds"})
        assert reader.read() == {"fds": [0, 1, 2]}
        for fd in reader.fds:
            os.close(fd)
        time.sleep(client.REPLY_TIMEOUT + 1)  # slower than a launcher that is not there at all
        send(conn, {"pid": os.getpid()})
        send(conn, {"exit": 7})
        conn.close()

    thread = threading.Thread(target=slow_launcher, daemon=True)
    thread.start()
    try:
        assert client.launch(["run", "--name", "slow"]) == 7  # the launched VM's status, not None (run it here)
    finally:
        thread.join(30)
        server.close()
