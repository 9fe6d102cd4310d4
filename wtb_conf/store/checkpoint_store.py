"""What `wtb fsck`, `rm` and `gc` ask of LangGraph's checkpointer, whose links the store keeps.

The checkpointer is the job floor's (wtb_conf.job.checkpointer), which imports the store: the
store cannot import it back, so it names here the shape it needs, and its caller (the CLI)
hands it an object of that shape (`wtb_conf.job.checkpointer.Checkpoints(where)`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

Key = tuple[str, str, str]  # (thread_id, checkpoint_ns, checkpoint_id)


class CheckpointStore(Protocol):
    """LangGraph's checkpointer, one SQLite file or PostgreSQL database. Its read methods
    never change it; each raises a StoreError, naming where it is, if it cannot be read."""

    def describe(self) -> str:
        """Where it is, for messages (a path, or a URL without its password)."""

    def missing(self, keys: Iterable[Key]) -> set[Key]:
        """The keys that have no checkpoint there."""

    def integrity_problems(self) -> list[str] | None:
        """Its database's integrity check errors ([] when sound or absent); None when it has
        no such check (PostgreSQL)."""

    def thread_ids(self) -> list[str]:
        """Every thread id it holds."""

    def delete_threads(self, threads: list[str]) -> list[str]:
        """Delete these threads; those deleted."""
