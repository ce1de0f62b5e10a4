"""LiberTEM-live's detector simulators as child processes on loopback, for the stream tests and the
stream benchmark: ``libertem-live-mib-sim`` (Merlin TCP) and ``libertem-live-dectris-sim`` (DECTRIS
zmq + SIMPLON REST API).

Start-up is waited for robustly: the simulator counts as up when its process listens on every one
of its ports (read from the process table with psutil, without connecting: a connection to the
Merlin data port would start sending it an acquisition), polled until ``timeout_s`` (120 s by
default: importing LiberTEM and opening the file take long on a loaded machine). Ports are picked
free and distinct; when the simulator exits before it listens (a port taken in between, for
example), it is started again on fresh ports. If it never comes up, the error carries the end of
its log (stdout and stderr), and the process is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil


def simulator(name: str) -> str | None:
    """Path of a LiberTEM-live simulator command (``libertem-live-mib-sim``...), None if missing."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open while picking, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening_ports(pid: int) -> set[int]:
    """TCP ports on which process ``pid`` or its children listen."""
    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    ports = set()
    for p in procs:
        try:
            conns = p.net_connections(kind="tcp") if hasattr(p, "net_connections") else p.connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN)
    return ports


class SimProcess:
    """A simulator process on loopback ports; ``start()`` returns once it listens on all of them."""

    ports: dict
    name = "simulator"

    def __init__(self, log, timeout_s: float = 120.0, attempts: int = 3):
        self.log = Path(log)
        self.timeout_s = float(timeout_s)
        self.attempts = int(attempts)
        self.proc = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def pick_ports(self) -> None:
        raise NotImplementedError

    def ports_known(self) -> bool:
        return True

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def launch(self, fresh_ports: bool = True):
        """Start the process on fresh ports (or on those picked before: ``pick_ports()``, then a
        client told them, then ``launch(fresh_ports=False)``), without waiting (see :meth:`wait`)."""
        if fresh_ports or not getattr(self, "ports", None):
            self.pick_ports()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        return self

    def wait(self):
        """Poll until the process listens on all its ports, up to ``timeout_s`` from this call;
        started again on fresh ports if it exits because a port was taken meanwhile."""
        if self.proc is None:
            self.launch()
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(1, self.attempts + 1):
            while time.monotonic() < deadline:
                if self.ports_known() and set(self.ports.values()) <= listening_ports(self.proc.pid):
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
            if self.proc.poll() is None:  # still not listening: give up
                self.stop()
                raise RuntimeError(f"the {self.name} did not listen on {self.ports} within {self.timeout_s:g} s "
                                   f"({' '.join(self.command())}); its log:\n{self.log_tail()}")
            if attempt == self.attempts or not any(m in self.log_tail().lower() for m in (
                    "address already in use", "possible to bind")):
                raise RuntimeError(f"the {self.name} exited with status {self.proc.returncode} before listening "
                                   f"({' '.join(self.command())}); its log:\n{self.log_tail()}")
            self.launch()
        raise AssertionError("unreachable")

    def start(self):
        """Launch and wait until it listens."""
        return self.launch().wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for child in children:  # e.g. the DECTRIS simulator's REST server
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class MerlinSim(SimProcess):
    """``libertem-live-mib-sim HDR``: data, control and trigger ports; ``dwell_us`` paces the frames,
    else they are sent from memory as fast as possible."""

    name = "Merlin simulator"

    def __init__(self, hdr, nav_shape, log, dwell_us=None, **kw):
        super().__init__(log, **kw)
        self.hdr, self.nav_shape, self.dwell_us = Path(hdr), tuple(nav_shape), dwell_us

    def pick_ports(self):
        data, control, trigger = free_ports(3)
        self.ports = {"data": data, "control": control, "trigger": trigger}

    @property
    def data(self) -> int:
        return self.ports["data"]

    @property
    def control(self) -> int:
        return self.ports["control"]

    def command(self):
        cmd = [simulator("libertem-live-mib-sim"), str(self.hdr), "--nav-shape", *map(str, self.nav_shape),
               "--host", "127.0.0.1", "--data-port", str(self.data), "--control-port", str(self.control),
               "--trigger-port", str(self.ports["trigger"])]
        cmd += ["--dwelltime", str(int(self.dwell_us)), "--cached", "NONE"] if self.dwell_us else ["--cached", "MEM"]
        return cmd


class DectrisSim(SimProcess):
    """``libertem-live-dectris-sim DUMP``: the SIMPLON REST API (``api``) and the zmq stream
    (``zmq``), on ports the simulator picks and logs; ``arm()`` arms the simulated detector through
    the REST API, as the acquisition software does, and the simulator then streams the dump's
    series (``dwell_us`` per frame)."""

    name = "DECTRIS simulator"

    def __init__(self, dump, log, dwell_us=None, **kw):
        super().__init__(log, **kw)
        self.dump, self.dwell_us = Path(dump), dwell_us

    def pick_ports(self):
        # port 0: the simulator binds free ports itself and logs them. A fixed zmq port races with
        # itself: libertem-live 0.3 binds it once per access to its replay's ``sim`` property (three
        # times at start-up), and a bind can fail while the previous socket is still closing.
        self.ports = {}

    def ports_known(self) -> bool:
        import re

        text = self.log_tail(10**6)
        api = re.search(r"API server listening on \('[^']*', (\d+)\)", text)
        zmq = re.search(r"RustedReplay listening on tcp://[^:]+:(\d+)", text)
        if api and zmq:
            self.ports = {"api": int(api.group(1)), "zmq": int(zmq.group(1))}
        return bool(api and zmq)

    @property
    def zmq(self) -> int:
        return self.ports["zmq"]

    def command(self):
        cmd = [simulator("libertem-live-dectris-sim"), str(self.dump), "--port", "0", "--zmqport", "0"]
        return cmd + (["--dwelltime", str(int(self.dwell_us))] if self.dwell_us else [])

    def arm(self) -> dict:
        """``PUT /detector/api/1.8.0/command/arm``: the series starts (trigger mode exte)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports['api']}/detector/api/1.8.0/command/arm",
                                     method="PUT", data=b"{}", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
