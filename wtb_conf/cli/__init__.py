"""`wtb`: look at what the sweeps recorded. Every command and its --json output is documented
in docs/cli.md (tests/test_docs.py fails when one is not). The commands are in the modules
named for them: runs (runs, show, log, restore, diff), replay (rerun, resume, rollback),
scores (compare, evaluate, report), upkeep (fsck, rm, gc), project (schema, init); what
their command lines share is in options."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

import click

from wtb_conf.cli import project, replay, runs, scores, upkeep
from wtb_conf.cli.options import StoreAt, blobs_option, db_option, usage_error
from wtb_conf.store import StoreError


class _InOrder(click.Group):
    """`wtb --help` lists the commands in the order they are added, grouped as above."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group("wtb", cls=_InOrder, help="Inspect the runs wtb_conf recorded.",
             context_settings={"help_option_names": ["-h", "--help"]})
@db_option
@blobs_option
@click.pass_context
def wtb(ctx: click.Context, db: str, blobs: str) -> None:
    ctx.obj = StoreAt(db, blobs)


for _module in (runs, replay, scores, upkeep, project):
    for _command in _module.COMMANDS:
        wtb.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """`wtb ARGV...` (None: sys.argv's): its exit status; 2 for a usage error."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `wtb compare --csv | head` ends quietly
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        code = wtb.main(args, prog_name="wtb", standalone_mode=False)
    except click.UsageError as e:
        print(usage_error(e), file=sys.stderr)
        return 2
    except click.ClickException as e:  # the store is missing
        print(f"wtb: error: {e.format_message()}", file=sys.stderr)
        return e.exit_code
    except click.Abort as e:  # Ctrl-C (click's word for it): as Python ends on it
        raise e.__cause__ or KeyboardInterrupt() from None
    except StoreError as e:
        print(f"wtb: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # where restore --to, report --out or schema --out cannot write
        where = f"{e.filename}: " if e.filename else ""
        print(f"wtb: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0
