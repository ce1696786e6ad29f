"""``visionops weights list | mirror``: thin commands over :mod:`visionops.weights`."""

from __future__ import annotations

import typer

weights_app = typer.Typer(
    help="Pretrained torchvision weights: list the names `train --pretrained torchvision:NAME` accepts, and "
    "mirror weights to object storage for clusters without internet.",
    no_args_is_help=True,
)


@weights_app.command("list")
def list_cmd(
    architecture: str | None = typer.Argument(None, help="One architecture (default: all with weights)."),
) -> None:
    """Each architecture's torchvision weights names and the preprocessing they bring."""
    import torchvision

    from visionops.weights import torchvision_architectures, torchvision_weight_names
    from visionops.weights.pretrained import spec_from_transforms

    for arch in [architecture] if architecture else torchvision_architectures():
        for name in torchvision_weight_names(arch):
            weight = torchvision.models.get_model_weights(arch)[name]
            spec = spec_from_transforms(weight)
            typer.echo(
                f"{arch}\ttorchvision:{name}\t{type(weight).__name__}.{weight.name}\t"
                f"resize {spec.resize_size} crop {spec.image_size} {spec.interpolation}"
            )


@weights_app.command("mirror")
def mirror_cmd(
    architecture: str = typer.Argument(..., help="Architecture from the registry, e.g. resnet18."),
    weights: str = typer.Argument(
        ..., help="Weights name: IMAGENET1K_V1, DEFAULT, or ResNet18_Weights.IMAGENET1K_V1."
    ),
    destination: str = typer.Argument(..., help="Where the mirror goes (s3://bucket/prefix or a folder)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the download progress."),
) -> None:
    """Copy torchvision weights (from torch.hub's cache, downloading if absent) to DESTINATION as safetensors
    plus weights.json (preprocessing, source name, sha256); then `train --pretrained DESTINATION`."""
    from visionops.weights import mirror_weights

    typer.echo(mirror_weights(architecture, weights, destination, progress=progress))


def register(app: typer.Typer) -> None:
    """Add ``visionops weights`` to the root app."""
    app.add_typer(weights_app, name="weights")
