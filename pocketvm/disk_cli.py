"""`pocket disk ...`: make and inspect disk images without qemu-img.

Loaded only when a `pocket disk` command runs (see cli._Group).
"""

from __future__ import annotations

import json
import re

import click

from pocketvm.backends.disk import DiskError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4G', '512M', '10737418240', '1.5T' -> bytes (binary units, as qemu-img)."""
    m = _SIZE.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size (examples: 4G, 512M, 1073741824)")
    number, unit = float(m.group(1)), m.group(2).upper()
    size = int(number * (1 << (10 * " KMGTP".index(unit or " "))))
    if size <= 0:
        raise click.BadParameter(f"{text!r}: a disk must have a positive size")
    return (size + 511) // 512 * 512


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def disk() -> None:
    """Make and inspect disk images (qcow2 and raw).

    A qcow2 image with a backing file (an overlay) stores only what was
    written to it; everything else is read from the backing file, which is
    never changed. `pocket run --disk` takes raw and qcow2 images; the
    format is recognised from the content, not the file name.
    """


@disk.command("create")
@click.argument("path", metavar="NEW.qcow2", type=click.Path(dir_okay=False))
@click.option("-s", "--size", metavar="SIZE", help="Virtual size: 4G, 512M, ... (default: the backing file's).")
@click.option("-b", "--backing", metavar="FILE", help="Backing file (raw or qcow2): the new image starts as a copy-on-write view of it.")
def create(path: str, size: str | None, backing: str | None) -> None:
    """Create a new qcow2 image: empty (--size), or an overlay on --backing.

    \b
      pocket disk create --size 8G data.qcow2
      pocket disk create --backing debian.qcow2 mine.qcow2
    A relative --backing path is relative to the new image's directory, as
    in qemu-img; the backing file is only read.
    """
    from pocketvm.backends.qcow2_create import create_qcow2

    if size is None and backing is None:
        raise DiskError("give --size, --backing or both")
    create_qcow2(path, size=parse_size(size) if size else None, backing=backing)
    click.echo(f"created {path}")


@disk.command("info")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(path: str, as_json: bool) -> None:
    """Show an image's format, virtual size, space used on the host and its backing chain."""
    from pocketvm.backends.open_disk import disk_info

    result = disk_info(path)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    for depth, layer in enumerate(result.chain):
        indent = "  " * depth
        if depth:
            click.echo(f"{indent[:-2]}backed by:")
        click.echo(f"{indent}image: {layer.path}")
        click.echo(f"{indent}format: {layer.format}")
        click.echo(f"{indent}virtual size: {_human(layer.virtual_size)} ({layer.virtual_size} bytes)")
        click.echo(f"{indent}allocated on host: {_human(layer.allocated)}")
        if layer.cluster_size:
            click.echo(f"{indent}cluster size: {layer.cluster_size}")
        if layer.backing_file:
            fmt = f" ({layer.backing_format})" if layer.backing_format else ""
            click.echo(f"{indent}backing file: {layer.backing_file}{fmt}")


@disk.command("convert")
@click.argument("src", metavar="SRC", type=click.Path(dir_okay=False))
@click.argument("dst", metavar="DST.qcow2", type=click.Path(dir_okay=False))
def convert(src: str, dst: str) -> None:
    """Copy SRC (raw, or qcow2 with its chain) into a new standalone qcow2
    image; all-zero clusters take no space."""
    from pocketvm.backends.qcow2_create import convert_to_qcow2

    convert_to_qcow2(src, dst)
    click.echo(f"created {dst}")
