"""`pocket image ...` commands (a click group the main CLI attaches)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
from rich.console import Console

from .errors import ImageError
from .pull import default_image_dir, load_default_image, pull_default_image
from .sources import MIRROR_ENV


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except ImageError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None


@click.group("image")
def image() -> None:
    """Guest images: boot files (kernel, initramfs, OpenSBI) and Debian systems on qcow2 disks."""


@image.command("pull")
@click.option("--mirror", metavar="URL", help=f"Debian mirror to use (default: ${MIRROR_ENV}, else the host's apt sources).")
@click.option("--force", is_flag=True, help="Rebuild even if a complete image is cached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def pull(mirror: str | None, force: bool, quiet: bool) -> None:
    """Download Debian trixie riscv64 packages and build the default boot files."""
    with _one_line_errors():
        files = pull_default_image(mirror=mirror, force=force, quiet=quiet)
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


@image.command("build")
@click.argument("distribution", type=click.Choice(["debian"]))
@click.option("--name", default="", help="Name of the image (default: the distribution's name; with --desktop, "
              "debian-desktop).")
@click.option("--desktop", is_flag=True,
              help="A separate image with a small desktop (X.org, the jwm window manager, xterm) on top of the "
              "plain debian image (built first if needed). The desktop starts when the VM has a display: "
              "`pocket run --image debian-desktop --display web` restores straight into it. 8-15 minutes.")
@click.option("--packages", metavar="PKG[,PKG...]", default="",
              help="Extra Debian packages to install (comma-separated; with --desktop, into the desktop image).")
@click.option("--mirror", metavar="URL", help=f"Debian mirror (default: ${MIRROR_ENV}, else the host's apt sources). "
              "It is also the mirror the guest's apt uses.")
@click.option("--force", is_flag=True, help="Build again even if an image with the same inputs exists.")
@click.option("--no-template", is_flag=True, help="Do not boot the result once to save a template snapshot.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def build(distribution: str, name: str, desktop: bool, packages: str, mirror: str | None, force: bool,
          no_template: bool, quiet: bool) -> None:
    """Build a Debian trixie riscv64 system on a qcow2 root disk.

    The first stage (debootstrap, download and unpack) runs on the host and
    needs root; the second stage (package configuration) runs inside a
    pocketvm VM. The result is a read-only qcow2 base image plus a template:
    a snapshot of the system booted once, which `pocket run --image NAME`
    restores in a fraction of a second. A second build with the same inputs
    does nothing. Takes about 15-30 minutes the first time.

    With --desktop: the image debian-desktop, the plain system plus a small
    desktop, started when the VM has a display (without one it behaves like
    the plain image). Its template is taken with a 1024x768 display and the
    desktop up.
    """
    extra = [p.strip() for p in packages.split(",") if p.strip()]
    with _one_line_errors():
        if desktop:
            from .desktop import DEFAULT_NAME
            from .desktop import build as build_desktop

            img = build_desktop(name or DEFAULT_NAME, extra, mirror=mirror, force=force, template=not no_template,
                                quiet=quiet)
        else:
            from .debian import build as build_debian

            img = build_debian(name or distribution, extra, mirror=mirror, force=force, template=not no_template,
                               quiet=quiet)
    if not quiet:
        out = Console()
        out.print(f"[bold]{img.name}[/bold]: Debian {img.manifest.get('suite')} {img.manifest.get('architecture')}, "
                  f"{len(img.manifest.get('packages', []))} packages + minbase, Linux {img.manifest.get('kernel_release')}")
        out.print(f"  base      {img.base}")
        out.print(f"  template  {img.template or '(none)'}")
        shown = " --display web" if img.manifest.get("template_display") else ""
        out.print(f"  run it:   pocket run --image {img.name}{shown}")


@image.command("ls")
def list_images() -> None:
    """List the built images."""
    from .catalog import list_images as images

    rows = [("NAME", "KIND", "SIZE", "TEMPLATE", "BUILT")]
    for info in images():
        rows.append((info.name, info.kind, f"{info.size / (1 << 20):.0f}M", "yes" if info.template else "no",
                     info.built))
    if len(rows) == 1:
        click.echo("no images: `pocket image pull` fetches the boot files, `pocket image build debian` a system")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@image.command("rm")
@click.argument("name")
def remove(name: str) -> None:
    """Delete the built image NAME (its base disk and template)."""
    from .catalog import remove_image

    with _one_line_errors():
        remove_image(name)
