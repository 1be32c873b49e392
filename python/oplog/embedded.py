"""The embedded PostgreSQL (the ``pgserver`` package) the ``oplog`` command uses when no DSN is
given: one server per data directory, started on demand and left running for later commands."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from oplog.errors import EmbeddedServerError

__all__ = [
    "EmbeddedServerError",
    "EmbeddedStatus",
    "default_data_dir",
    "ensure_running",
    "status",
    "stop",
]


ROOT_DATA_DIR = Path("/var/lib/oplog/pgdata")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/oplog/pgdata`` (``~/.local/share/oplog/pgdata`` by default).

    For root without ``XDG_DATA_HOME``, ``/var/lib/oplog/pgdata``: as root, pgserver runs the
    server as its own ``pgserver`` account and makes every parent of the data directory
    traversable for it, which under ``/root`` would open up root's home directory.
    """
    base = os.environ.get("XDG_DATA_HOME")
    if not base:
        if os.geteuid() == 0:
            return ROOT_DATA_DIR
        base = str(Path.home() / ".local" / "share")
    return Path(base) / "oplog" / "pgdata"


def _quiet_import() -> None:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; irrelevant here.
        warnings.simplefilter("ignore")
        try:
            import pgserver  # noqa: F401
        except ImportError as exc:
            raise EmbeddedServerError(
                "the embedded server needs the pgserver package: pip install 'oplog[embedded]'"
            ) from exc


def ensure_running(data_dir: Path) -> str:
    """Starts the server of `data_dir` unless it runs; returns its connection URI."""
    _quiet_import()
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            server = get_server(data_dir, cleanup_mode=None)
        except Exception as exc:
            raise EmbeddedServerError(
                f"the embedded server in {data_dir} did not start: {exc}"
            ) from exc
    return str(server.get_uri())


@dataclass(frozen=True)
class EmbeddedStatus:
    """Whether the server of a data directory runs, and how to reach it."""

    data_dir: Path
    initialized: bool
    running: bool
    pid: int | None
    uri: str | None


def status(data_dir: Path) -> EmbeddedStatus:
    """The state of the server of `data_dir`, without starting it."""
    _quiet_import()
    from pgserver.utils import PostmasterInfo

    initialized = (data_dir / "PG_VERSION").exists()
    info = PostmasterInfo.read_from_pgdata(data_dir) if initialized else None
    running = info is not None and info.is_running()
    return EmbeddedStatus(
        data_dir,
        initialized,
        running,
        info.pid if running and info is not None else None,
        info.get_uri() if running and info is not None else None,
    )


def stop(data_dir: Path) -> bool:
    """Stops the server of `data_dir`; returns False if it was not running."""
    if not status(data_dir).running:
        return False
    from pgserver import _commands

    pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 (made by a factory at import time)
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user, timeout=30)
    except Exception as exc:
        raise EmbeddedServerError(f"the embedded server in {data_dir} did not stop: {exc}") from exc
    return True
