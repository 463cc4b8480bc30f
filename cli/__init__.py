"""`nanoinspect`: the product's one command line, one subcommand per job, above the packages it
drives (cli -> service, training, models). Each command imports its package inside itself, so
`nanoinspect --help`, `serve` and `score` run without torch. User mistakes end as one line on
stderr, exit 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from cli import model, score, serve, synth, train
from models.errors import NanoinspectError

app = typer.Typer(
    help="Find defects in SEM images of nanofibre mats.",
    rich_markup_mode=None,  # plain click help: rich cuts option names at 80 columns
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A NanoinspectError ends the command as one line on stderr and its exit code, not a
    traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NanoinspectError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(getattr(e, "exit_code", 2)) from None

    return wrapper


# in this order in --help: make data, train, export, recalibrate, measure; then serve, score
for command in (
    synth.synth,
    train.train,
    model.export,
    model.calibrate,
    model.evaluate,
    serve.serve,
    score.score,
):
    app.command()(one_line_errors(command))
