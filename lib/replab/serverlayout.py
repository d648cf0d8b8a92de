"""Where replab's things live on the GPU server, and what its backup job is told.

The one low-level place that both the host setup (``replab.hostsetup``, which puts them
there) and the lab (``replab.lab``, which runs on them) read; it imports nothing of replab,
so neither side has to import the other for it.

- :data:`ROOT` / :data:`SOURCE_PARTS`: this checkout, and the parts of it uploaded to the
  server as the images' build context and replab's source;
- :class:`HostPaths`: the directories on the server (``/home/cc/<experiment>/...``);
- :func:`server_database_uri`: the lab's MLflow database as the server itself reaches it;
- :data:`DB_ENV` / :data:`VERSION_ENV`: the environment the server's ``replab lab backup``
  reads (which database, which MLflow wrote it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]  # the artifact (…/lib/replab -> …)
SOURCE_PARTS = ("docker", "lib", "pyproject.toml", "README.md", "LICENSE")

DB_ENV = "REPLAB_MLFLOW_DB"  # the database to back up, as a URI (the GPU server's unit)
VERSION_ENV = "REPLAB_MLFLOW_VERSION"  # the lab container's MLflow (the GPU server's unit)

# the lab's PostgreSQL as the GPU server itself reaches it (compose publishes it on loopback)
SERVER_POSTGRES_URI = "postgresql://mlflow@127.0.0.1:5432/mlflow"


@dataclass(frozen=True)
class HostPaths:
    """Directories on the node. ``repo``: the clone of the user's repository; ``mounts``: the
    directory holding the data bucket's rclone mountpoint ``data`` (mount nothing else there:
    the container sees all of it); ``lab``: compose.yaml, .env and ``mlflow/`` (the sqlite
    database); ``cache``: the Hugging Face cache (``cache/huggingface``); ``source``: this
    replab checkout, the images' build context."""

    root: str
    repo: str
    mounts: str
    lab: str
    cache: str
    source: str

    @classmethod
    def under(cls, root: str) -> HostPaths:
        """The default layout below ``root``."""
        r = PurePosixPath(root)
        return cls(root=str(r), repo=str(r / "repo"), mounts=str(r / "mnt"),
                   lab=str(r / "lab"), cache=str(r / "cache"), source=str(r / "replab"))

    @classmethod
    def for_config(cls, cfg, home: str = "/home/cc") -> HostPaths:
        """``/home/cc/<experiment>/{repo,mnt,lab,cache,replab}``."""
        return cls.under(str(PurePosixPath(home) / cfg.experiment))

    @property
    def data(self) -> str:
        """The data bucket's rclone mountpoint: ``<mounts>/data``."""
        return str(PurePosixPath(self.mounts) / "data")

    @property
    def workdir(self) -> str:
        """The server's replab work directory (config.yaml and the EC2 keys the backup timer
        uses): ``<root>/work``."""
        return str(PurePosixPath(self.root) / "work")

    @property
    def venv(self) -> str:
        """The virtual environment replab is installed in on the server: ``<root>/venv``."""
        return str(PurePosixPath(self.root) / "venv")

    @property
    def replab(self) -> str:
        """The server's ``replab`` command (in :attr:`venv`)."""
        return str(PurePosixPath(self.venv) / "bin" / "replab")

    @property
    def mlflow_dir(self) -> str:
        return str(PurePosixPath(self.lab) / "mlflow")

    @property
    def hf_home(self) -> str:
        return str(PurePosixPath(self.cache) / "huggingface")

    def directories(self) -> list[str]:
        """The directories the launcher creates (owned by the login user, uid 1000 like the
        containers' users) before ``docker compose up``; ``data`` is the mountpoint."""
        return [self.repo, self.mounts, self.data, self.lab, self.mlflow_dir, self.hf_home]


def server_database_uri(cfg, paths: HostPaths) -> str:
    """The URI of the lab's MLflow database on the GPU server, without a password: the
    sqlite file the mlflow container mounts, or its PostgreSQL."""
    if cfg.lab.mlflow_backend == "postgresql":
        return SERVER_POSTGRES_URI
    return f"sqlite:///{paths.mlflow_dir}/mlflow.db"


__all__ = ["DB_ENV", "ROOT", "SERVER_POSTGRES_URI", "SOURCE_PARTS", "VERSION_ENV", "HostPaths",
           "server_database_uri"]
