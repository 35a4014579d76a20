"""The ``perception`` command line: training, evaluation, prediction, export and benchmarks.

Commands are thin entries; torch-dependent modules are imported inside the command that needs them.
"""

from __future__ import annotations

import typer

import perception

app = typer.Typer(no_args_is_help=True, help="Multi-camera BEV perception: train, evaluate, predict, export, bench.")


@app.callback()
def main() -> None:
    """Multi-camera BEV perception: train, evaluate, predict, export, bench."""


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(perception.__version__)


if __name__ == "__main__":
    app()
