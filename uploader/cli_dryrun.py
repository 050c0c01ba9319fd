"""How `run --dry-run` and `sync --dry-run` show what they would do."""

from __future__ import annotations

import click

from .dryrun import Plan
from .i18n import _
from .printable import printable


def show(plan: Plan) -> None:
    """One line per file, then the counts; the last line says nothing was done."""
    for path, size in plan.upload:
        click.echo(printable(_("would upload {path} ({size} bytes)").format(path=path, size=size)))
    for path, size in plan.replace:
        said = _("would replace the entry of {path} ({size} bytes, changed)")
        click.echo(printable(said.format(path=path, size=size)))
    for path in plan.relabel:
        click.echo(printable(_("would update the labels of {path}").format(path=path)))
    for path in plan.delete:
        click.echo(printable(_("would delete the entry of {path} (removed)").format(path=path)))
    click.echo(
        _(
            "dry run: {upload} to upload, {replace} to replace, {relabel} to relabel, {delete} "
            "to delete; nothing was sent and nothing changed"
        ).format(
            upload=len(plan.upload),
            replace=len(plan.replace),
            relabel=len(plan.relabel),
            delete=len(plan.delete),
        )
    )
