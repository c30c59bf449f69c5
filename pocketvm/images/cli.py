"""`pocket image ...` commands (a click group the main CLI attaches)."""

from __future__ import annotations

import click
from rich.console import Console

from .errors import ImageError
from .pull import default_image_dir, load_default_image, pull_default_image
from .sources import MIRROR_ENV


@click.group("image")
def image() -> None:
    """Guest boot images (Debian riscv64 kernel, initramfs, OpenSBI)."""


@image.command("pull")
@click.option("--mirror", metavar="URL", help=f"Debian mirror to use (default: ${MIRROR_ENV}, else the host's apt sources).")
@click.option("--force", is_flag=True, help="Rebuild even if a complete image is cached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def pull(mirror: str | None, force: bool, quiet: bool) -> None:
    """Download Debian trixie riscv64 packages and build the default boot files."""
    try:
        files = pull_default_image(mirror=mirror, force=force, quiet=quiet)
    except ImageError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None
    if not quiet:
        out = Console()
        out.print(f"[bold]Debian trixie riscv64[/bold], Linux {files.version}")
        for label, path in (("kernel", files.kernel), ("initrd", files.initrd), ("bios", files.bios)):
            out.print(f"  {label:<7}{path}")


@image.command("path")
def path() -> None:
    """Print the default image directory (exit status 1 if not pulled yet)."""
    click.echo(default_image_dir())
    if load_default_image() is None:
        raise SystemExit(1)
