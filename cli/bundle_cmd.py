"""`nts bundle export`: give a bundle from before ONNX its model.onnx (parse, call, print)."""
from __future__ import annotations

import click

from cli.common import overwrite_option, setup_logging


@click.group("bundle")
def bundle_group() -> None:
    """Model bundle maintenance."""


@bundle_group.command("export")
@click.argument("model_path", type=click.Path())
@overwrite_option
def export(model_path: str, overwrite: bool) -> None:
    """Export a bundle's weights to model.onnx (the graph every engine scores with) and record its
    sha256 in bundle.json. Needed once for bundles trained before ONNX; a bundle that already has
    its graph is left alone. Imports torch (training does too; trading never does)."""
    from models.onnx_export import export_into_bundle

    log = setup_logging("bundle")
    path, sha, written = export_into_bundle(model_path, overwrite=overwrite)
    if written:
        log.info("exported %s (sha256 %s)", path, sha)
        click.echo(f"wrote {path} (sha256 {sha[:16]}...) and recorded it in bundle.json")
    else:
        click.echo(f"{path.parent}: already has {path.name} (sha256 {sha[:16]}...); nothing to do")
