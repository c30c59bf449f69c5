import pytest

from pocketvm.images.errors import ImageError
from pocketvm.images.sources import (
    check_mirror, host_sources, parse_deb822, parse_one_line, pick_debian_mirror, resolve_mirror,
)

# Host names here are placeholders (example.org/.net/.com), not real mirrors.
DEB822 = """\
# Modernized from /etc/apt/sources.list
Types: deb deb-src
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

THIRD_PARTY_DEB822 = """\
Types: deb
URIs: https://vendor.example.com/node_20.x
Suites: nodistro
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/vendor.gpg
"""

ONE_LINE = """\
# deb cdrom:[Debian GNU/Linux 12]/ bookworm main
deb http://security.example.net/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/vendor.gpg] https://apt.example.com/sdk cloud-sdk main
deb-src http://ftp.example.net/debian bookworm main
deb [ arch=amd64,arm64 ] http://ftp.example.net/debian bookworm main non-free-firmware # trailing comment
deb http://ftp.example.net/debian bookworm-updates main
"""


def test_deb822_fields_and_options():
    sources = parse_deb822(DEB822)
    assert len(sources) == 2
    first = sources[0]
    assert first.types == ("deb", "deb-src")
    assert first.uris == ("http://mirror.example.org/debian/",)
    assert first.suites == ("bookworm", "bookworm-updates")
    assert first.options["signed-by"].endswith("debian-archive-keyring.gpg")


def test_deb822_skips_disabled_stanzas():
    text = DEB822.replace("Types: deb deb-src", "Types: deb deb-src\nEnabled: no")
    assert pick_debian_mirror(parse_deb822(text)) is None


def test_one_line_format_with_options_and_comments():
    sources = parse_one_line(ONE_LINE)
    assert [s.types[0] for s in sources] == ["deb", "deb", "deb-src", "deb", "deb"]
    assert sources[1].options == {"arch": "amd64", "signed-by": "/usr/share/keyrings/vendor.gpg"}
    assert sources[3].components == ("main", "non-free-firmware")


def test_picks_main_archive_not_security_or_third_party():
    assert pick_debian_mirror(parse_deb822(DEB822)) == "http://mirror.example.org/debian"
    assert pick_debian_mirror(parse_one_line(ONE_LINE)) == "http://ftp.example.net/debian"
    assert pick_debian_mirror(parse_deb822(THIRD_PARTY_DEB822)) is None
    only_security = parse_one_line("deb http://security.example.net/debian-security bookworm-security main\n")
    assert pick_debian_mirror(only_security) is None


def test_host_sources_reads_both_formats(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("# empty, as on fresh installs\n")
    (etc / "sources.list.d" / "vendor.sources").write_text(THIRD_PARTY_DEB822)
    (etc / "sources.list.d" / "debian.sources").write_text(DEB822)
    (etc / "sources.list.d" / "old.list.disabled").write_text("deb http://wrong.example.org/debian sid main\n")
    sources = host_sources(etc)
    assert {s.origin.rsplit("/", 1)[-1] for s in sources} == {"debian.sources", "vendor.sources"}
    assert resolve_mirror(None, environ={}, etc_apt=etc) == "http://mirror.example.org/debian"


def test_override_order_explicit_then_env_then_host(tmp_path):
    etc = tmp_path / "apt"
    etc.mkdir()
    (etc / "sources.list").write_text("deb http://host.example.org/debian bookworm main\n")
    env = {"POCKETVM_MIRROR": "http://env.example.org/debian/"}
    assert resolve_mirror("https://cli.example.org/debian", env, etc) == "https://cli.example.org/debian"
    assert resolve_mirror(None, env, etc) == "http://env.example.org/debian"
    assert resolve_mirror(None, {}, etc) == "http://host.example.org/debian"


def test_no_mirror_and_bad_urls_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match="--mirror"):
        resolve_mirror(None, {}, tmp_path)
    for bad in ("ftp.example.org/debian", "gopher://x.example.org/", "http://x.example.org/a b",
                "http://x.example.org/debian]"):
        with pytest.raises(ImageError):
            check_mirror(bad)
    assert check_mirror("file:///srv/mirror/debian/") == "file:///srv/mirror/debian"
