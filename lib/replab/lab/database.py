"""The lab's MLflow backend store, as one value: a sqlite file or a PostgreSQL database.

What backups snapshot and restore into, and what the local launcher starts MLflow on; the
password never appears in :attr:`Database.uri` or the repr.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..serverlayout import DB_ENV


@dataclass(frozen=True)
class Database:
    """An MLflow backend store: a sqlite file, or a PostgreSQL database (the password is
    kept out of :attr:`uri` and the repr; it travels as ``PGPASSWORD``)."""

    backend: str  # "sqlite" or "postgresql"
    path: Path | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    name: str | None = None
    password: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def sqlite(cls, path: str | os.PathLike) -> Database:
        return cls("sqlite", path=Path(path).absolute())

    @classmethod
    def postgres(cls, host: str, port: int | None, user: str, name: str,
                 password: str | None = None) -> Database:
        return cls("postgresql", host=host, port=port, user=user, name=name, password=password)

    @classmethod
    def from_uri(cls, uri: str, password: str | None = None) -> Database:
        """``sqlite:////abs/path.db`` or ``postgresql[+driver]://user[:pw]@host[:port]/name``;
        a password in neither the URI nor ``password`` comes from ``PGPASSWORD``, else
        ``POSTGRES_PASSWORD`` (the lab's ``.env`` on the GPU server).

        Raises ConfigError for anything else."""
        if uri.startswith("sqlite:///"):
            return cls.sqlite(uri[len("sqlite:///"):])
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme.split("+")[0] in ("postgresql", "postgres") and parsed.path.strip("/"):
            return cls.postgres(parsed.hostname or "127.0.0.1", parsed.port or 5432,
                                urllib.parse.unquote(parsed.username or "mlflow"),
                                parsed.path.strip("/"),
                                password or (urllib.parse.unquote(parsed.password)
                                             if parsed.password else None)
                                or os.environ.get("PGPASSWORD")
                                or os.environ.get("POSTGRES_PASSWORD"))
        raise ConfigError([(DB_ENV, f"{uri.split('@')[-1]!r} is not a sqlite:/// or "
                                    "postgresql:// database URI")])

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI MLflow takes (driver psycopg 3), without the password."""
        if self.backend == "sqlite":
            return f"sqlite:///{self.path}"
        user = urllib.parse.quote(self.user or "", safe="")
        return f"postgresql+psycopg://{user}@{self.host}:{self.port}/{self.name}"

    def env(self) -> dict[str, str]:
        """What a client process needs in its environment (the PostgreSQL password)."""
        return {"PGPASSWORD": self.password} if self.backend == "postgresql" and \
            self.password else {}


__all__ = ["Database"]
