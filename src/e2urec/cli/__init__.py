"""The `e2urec` command line: every command turns E2URecError into one clear message and exit code 2. The
commands live in `research` (data, models, bench) and `deletion` (a deployed run); they are registered here."""

import typer

from e2urec import __version__
from e2urec.cli import deletion, research

app = typer.Typer(
    name="e2urec",
    help="LLM-based recommendation that can forget: prepare data, train, unlearn, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Fetch real datasets into the cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.command("fetch")(research.data_fetch)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"e2urec {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True,
                                      callback=show_version)) -> None:
    """LLM-based recommendation that can forget: prepare data, train, unlearn, evaluate."""


for command in (research.prepare, research.train, research.evaluate, research.unlearn, deletion.init,
                deletion.forget, deletion.ledger, research.anchor, research.bench, research.demo, deletion.serve,
                research.methods):
    app.command()(command)

__all__ = ["app"]
