"""What the `wtb` commands' command lines share, defined once: where the store is (`--db`,
`--blobs`, `--checkpoints`, each with its environment variable), `--json`, `--dry-run`, the
Hydra overrides after a run, and `store_command`, the decorator of a command that opens the
store (read-only or not) before it runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from wtb_conf.cli.common import note_lost, reap
from wtb_conf.storage import is_postgres, libpq_url, sqlalchemy_url


@dataclass(frozen=True)
class StoreAt:
    """Where `wtb --db/--blobs` (or their variables) put the store: the root's ctx.obj."""

    db: str  # an SQLAlchemy URL, or a SQLite path
    blobs: str


def store_at() -> StoreAt:
    """The store location of the command being run."""
    return click.get_current_context().find_object(StoreAt)


# storage=postgres reads these variables: where a sweep found its store, wtb does too
db_option = click.option(
    "--db", default="data/wtb.db", envvar="WTB_DB_URL", show_envvar=True, show_default=True,
    metavar="URL_OR_PATH", callback=lambda ctx, param, value: sqlalchemy_url(value),
    help="store database: SQLAlchemy URL (sqlite:///..., postgresql://...) or SQLite path")
blobs_option = click.option(
    "--blobs", default="data/blobs", envvar="WTB_BLOB_ROOT", show_envvar=True,
    show_default=True, metavar="DIR_OR_URL", help="blob directory or s3:// URL")
checkpoints_option = click.option(
    "--checkpoints", envvar="WTB_CHECKPOINTS", show_envvar=True, metavar="FILE_OR_URL",
    help="LangGraph's checkpointer the links point into: its SQLite file or a postgresql:// "
         "URL (default: the --db database if PostgreSQL, else data/checkpoints.db)")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="print it as JSON (its keys: docs/cli.md)")


def dry_run_option(help: str) -> Callable:
    return click.option("--dry-run", is_flag=True, help=help)


# Hydra overrides may come anywhere after the run: click takes the words that are not options
overrides_argument = click.argument("overrides", nargs=-1, metavar="[OVERRIDE]...")


def checkpoints_of(checkpoints: str | None, db: str) -> str:
    """LangGraph's checkpointer the store's links point into: --checkpoints (or
    $WTB_CHECKPOINTS), else as the packaged storage groups put it (storage=postgres: in the
    store's database)."""
    if checkpoints is not None:
        return checkpoints
    return libpq_url(db) if is_postgres(db) else "data/checkpoints.db"


def not_with(other: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A flag's callback: it and the flag `other` (a parameter name) exclude each other."""
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value and ctx.params.get(other):  # (the flag given second is checked second)
            theirs = next(p.opts[0] for p in ctx.command.params if p.name == other)
            raise click.UsageError(f"{param.opts[0]}: not allowed with {theirs}", ctx)
        return value
    return check


class NoStore(click.ClickException):
    """The store a command needs is not where --db says: a usage error's exit status."""

    exit_code = 2


class StoreCommand(click.Command):
    """A command that works on the store, opened for it before its callback runs."""

    def __init__(self, *args: Any, readonly: bool | Callable[[dict], bool] = False,
                 notes: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._readonly = readonly
        self.notes = notes  # whether it notes (read-only) or records (writing) dead runs

    def opens_readonly(self, params: dict[str, Any]) -> bool:
        """Whether these parameters (ctx.params) open the store read-only."""
        return self._readonly(params) if callable(self._readonly) else self._readonly


def store_command(name: str, help: str, *, readonly: bool | Callable[[dict], bool] = False,
                  notes: bool = True) -> Callable[[Callable], StoreCommand]:
    """`@click.command` for a command whose callback takes the open store first. `readonly`:
    whether (or, a function of its parameters, when) it opens the store read-only; `notes`:
    False for those that report dead runs themselves (fsck, gc)."""
    def decorate(fn: Callable) -> StoreCommand:
        def callback(**params: Any) -> Any:
            return _on_store(fn, params)

        callback.__click_params__ = getattr(fn, "__click_params__", [])
        more = f"\n\n{inspect.cleandoc(fn.__doc__)}" if fn.__doc__ else ""
        return click.command(name, cls=StoreCommand, help=help + more, short_help=help,
                             readonly=readonly, notes=notes)(callback)
    return decorate


def _on_store(fn: Callable, params: dict[str, Any]) -> Any:
    from wtb_conf.store import open_store

    command = click.get_current_context().command
    where = store_at()
    if "://" not in where.db and not Path(where.db).exists():
        raise NoStore(f"no store at {where.db}: run `python -m wtb_conf -m ...` here first, "
                      "or pass --db")
    readonly = command.opens_readonly(params)
    with open_store(where.db, where.blobs, readonly=readonly) as store:
        if command.notes:  # (fsck and gc report dead runs themselves; a repair records them)
            note_lost(store) if readonly else reap(store)
        return fn(store, **params)


def usage_error(e: click.UsageError) -> str:
    """A usage error in one line, naming the command, the culprit and where help is."""
    where = e.ctx.command_path if e.ctx else "wtb"
    if isinstance(e, click.exceptions.NoArgsIsHelpError):
        names = ", ".join(e.ctx.command.list_commands(e.ctx))
        message = f"a COMMAND is needed: one of {names}"
    else:
        message = " ".join(e.format_message().split())
    return f"{where}: error: {message} (see `{where} --help`)"
