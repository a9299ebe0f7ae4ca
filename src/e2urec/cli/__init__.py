"""The `e2urec` command line: every command turns E2URecError into one clear message and exit code 2. The
commands live in `research` (data, models, bench) and `deletion` (a deployed run); they are registered here."""

import typer

from e2urec import __version__
from e2urec.cli import catalog, deletion, research

app = typer.Typer(
    name="e2urec",
    help="LLM-based recommendation that can forget: prepare data, train, unlearn, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Fetch real datasets into the cache.", no_args_is_help=True)
app.add_typer(data_app, name="data", rich_help_panel="Data")
data_app.command("fetch")(research.data_fetch)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"e2urec {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True,
                                      callback=show_version)) -> None:
    """LLM-based recommendation that can forget: prepare data, train, unlearn, evaluate."""


# `e2urec --help` groups the commands by the step of the workflow they serve, in its order.
PANELS = {
    "Data": (research.prepare,),  # and the `data` group above: data fetch
    "Train": (research.train, research.anchor),
    "Unlearn": (research.unlearn, catalog.methods),
    "Evaluate": (research.evaluate, research.bench, research.demo),
    "Deploy": (deletion.init, deletion.forget, deletion.ledger, deletion.serve),
}
for panel, commands in PANELS.items():
    for command in commands:
        app.command(rich_help_panel=panel)(command)

__all__ = ["app"]
