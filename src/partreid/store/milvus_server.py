"""A local Milvus server from the ``milvus`` wheel (``pip install 'partreid[milvus-server]'``).

    with LocalMilvus("/tmp/milvus", auth=True) as srv:      # ~10 s to start
        open_store(srv.uri("site"), create=True, info=...)  # milvus://root:Milvus@127.0.0.1:PORT/site

    python -m partreid.store.milvus_server --data ~/milvus [--auth --password-file pw.txt]

The wheel is Milvus standalone (the proxy, query, data and index nodes of a cluster in one
process, with embedded etcd and local storage). Its components talk to each other over
127.0.0.1 and its embedded etcd listens there only; Milvus 2.3 binds its gRPC ports (the client
port and the components') on every interface, with no setting to narrow them: firewall them,
and turn authorization on, as for any server. Its binaries (about 250 MB unpacked) are unpacked once into a cache folder and
shared by every server started here. The server is stopped by :meth:`LocalMilvus.stop`, at
the end of a ``with`` block and, failing those, when this Python process exits.
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import os
import socket
import sys
import time
from typing import Any, Dict, List, Optional

from partreid.store.base import StoreError
from partreid.utils.cache import cache_dir
from partreid.utils.extras import require

ROOT_USER, ROOT_PASSWORD = "root", "Milvus"  # a new server's superuser (authorization on)
_COMPONENTS = (
    "rootCoord",
    "proxy",
    "queryCoord",
    "queryNode",
    "indexNode",
    "dataCoord",
    "dataNode",
)


def binaries_cache() -> str:
    """Where the wheel's binaries are unpacked once (``$XDG_CACHE_HOME/partreid/milvus-VER``)."""
    milvus = require("milvus", "milvus-server")
    return cache_dir(f"milvus-{milvus.__version__}")


def _shared_binaries(base_dir: str) -> None:
    """``base_dir/bin``: a link to the unpacked binaries, unpacked under a lock if needed."""
    milvus = require("milvus", "milvus-server")
    cache = binaries_cache()
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another process may be unpacking them
        milvus._initialize_data_files(cache)  # checks each file's checksum; unpacks the missing
    os.makedirs(base_dir, exist_ok=True)
    link = os.path.join(base_dir, "bin")
    if not os.path.islink(link):
        os.symlink(os.path.join(cache, "bin"), link)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalMilvus:
    """A Milvus standalone server on 127.0.0.1 with its data in ``base_dir``.

    ``auth``: authorization on (user ``root``; ``password``, set once started, or Milvus's
    default ``Milvus``); ``config``: more settings of milvus.yaml by dotted key (e.g.
    ``{"proxy.timeTickInterval": 50}``).
    """

    def __init__(
        self,
        base_dir: str,
        auth: bool = False,
        config: Optional[Dict[str, Any]] = None,
        password: str = ROOT_PASSWORD,
    ):
        milvus = require("milvus", "milvus-server")
        self.base_dir = os.path.abspath(base_dir)
        self.auth = auth
        self.password = password
        os.makedirs(os.path.join(self.base_dir, "configs"), exist_ok=True)
        etcd = os.path.join(self.base_dir, "configs", "embed-etcd.yaml")
        self._etcd_config(etcd)

        class Config(milvus.MilvusServerConfig):  # the wheel's, with our embedded etcd's file
            def update_extra_configs(self, content: str) -> str:
                content = super().update_extra_configs(content)
                return content.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd}\n", 1)

        self._server = milvus.MilvusServer(Config(), wait_for_started=False)
        self._server.set_base_dir(self.base_dir)
        self._server.config.set("authorization_enabled", bool(auth))
        for comp in _COMPONENTS:  # the components' own address: loopback, not the first NIC
            self._server.config.set(f"{comp}.ip", "127.0.0.1")
        for key, value in (config or {}).items():
            self._server.config.set(key, value)

    @staticmethod
    def _etcd_config(path: str) -> None:
        """The embedded etcd's own listeners on free loopback ports (its defaults, 2379 and
        2380, would collide with a second server on the machine)."""
        client, peer = _free_port(), _free_port()
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                "name: partreid\n"
                f"listen-client-urls: http://127.0.0.1:{client}\n"
                f"advertise-client-urls: http://127.0.0.1:{client}\n"
                f"listen-peer-urls: http://127.0.0.1:{peer}\n"
                f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
                f"initial-cluster: partreid=http://127.0.0.1:{peer}\n"
            )

    @property
    def host(self) -> str:
        """The address it listens on for clients."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The client port (the proxy's)."""
        return int(self._server.listen_port)

    @property
    def pid(self) -> Optional[int]:
        """The server process's id (None when stopped)."""
        proc = self._server.server_proc
        return None if proc is None else proc.pid

    def uri(self, collection: str = "partreid", password: Optional[str] = None) -> str:
        """A store URI of ``collection`` on this server (with the root credentials when
        authorization is on; ``password`` in place of the right one)."""
        cred = f"{ROOT_USER}:{password or self.password}@" if self.auth or password else ""
        return f"milvus://{cred}{self.host}:{self.port}/{collection}"

    def start(self, timeout: float = 120.0) -> LocalMilvus:
        """Start the server and wait until it answers (StoreError naming its log otherwise)."""
        _shared_binaries(self.base_dir)
        self._server.start()
        atexit.register(self.stop)
        try:
            self._server.wait_started(timeout=int(timeout * 1000))
        except (TimeoutError, RuntimeError) as e:
            log = os.path.join(self.base_dir, "logs", "milvus-stderr.log")
            self.stop()
            raise StoreError(
                f"the Milvus server in {self.base_dir} did not start: {e}; see {log}"
            ) from None
        self._wait_ready(time.monotonic() + timeout)
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Until a client can connect (healthz answers a little before the proxy serves)."""
        pm = require("pymilvus", "milvus")
        token = f"{ROOT_USER}:{ROOT_PASSWORD}" if self.auth else ""
        while True:
            try:
                client = pm.MilvusClient(uri=f"http://{self.host}:{self.port}", token=token)
                client.list_collections()
                if self.auth and self.password != ROOT_PASSWORD:
                    client.update_password(ROOT_USER, ROOT_PASSWORD, self.password)
                client.close()
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    self.stop()
                    raise StoreError(
                        f"the Milvus server in {self.base_dir} answers no client: {e}"
                    ) from None
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server (its data stays in ``base_dir``); nothing if it is not running."""
        if self._server.server_proc is not None:
            self._server.stop()
        atexit.unregister(self.stop)

    def __enter__(self) -> LocalMilvus:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m partreid.store.milvus_server --data DIR [--auth]``: a local server until
    Ctrl-C (its data stays in DIR for the next start)."""
    p = argparse.ArgumentParser(
        prog="python -m partreid.store.milvus_server", description=main.__doc__
    )
    p.add_argument("--data", required=True, help="the server's folder (data, logs, config)")
    p.add_argument("--auth", action="store_true", help="authorization on (user root)")
    p.add_argument(
        "--password-file", help="root's password (first line) instead of Milvus's default"
    )
    args = p.parse_args(argv)
    password = ROOT_PASSWORD
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.readline().strip()
    srv = LocalMilvus(args.data, auth=args.auth, password=password)
    srv.start()
    shown = srv.uri("site").replace(f":{password}@", ":***@")
    print(f"Milvus {srv.host}:{srv.port} (pid {srv.pid}), data in {srv.base_dir}; a store: {shown}")
    print("Ctrl-C stops it", flush=True)
    try:
        while srv.pid is not None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
