"""The database engines a benchmark can run the router on: SQLite (the default, a file in the
router's data folder) and PostgreSQL (a throwaway cluster on loopback started for the run,
``testing.postgres``, one fresh database per router)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

from testing.postgres import running_postgres

ENGINES = ("sqlite", "postgresql")


def add_database_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--database ENGINE [ENGINE ...]`` (default sqlite), read back as ``args.database``."""
    parser.add_argument("--database", nargs="+", choices=ENGINES, default=["sqlite"], help=help)


@contextmanager
def database_yaml(engines: Sequence[str]) -> Iterator[Callable[[str], str]]:
    """A function giving, per engine, the ``storage.database`` YAML of a fresh database
    (flow style, to put under ``storage:``); PostgreSQL is started only when asked for."""
    with ExitStack() as stack:
        server = (
            stack.enter_context(running_postgres(fsync=True)) if "postgresql" in engines else None
        )

        def yaml_for(engine: str) -> str:
            if engine == "sqlite":
                return "{engine: sqlite}"
            assert server is not None
            return f"{{engine: postgresql, url: '{server.create_database()}'}}"

        yield yaml_for
