"""The console's vendored browser libraries: where each file comes from, and how to fetch it again.

The console serves htmx and Chart.js from the package (``connector/console/static/vendor``): no CDN at run time, and
nothing fetched at build or install time either — the files are committed, byte for byte as the npm registry ships
them. ``python -m harness.console_vendor`` fetches the pinned versions with ``npm pack`` (npm checks each tarball
against the registry's integrity hash, and so does this script), and rewrites the files; ``tests/unit/test_console.py``
checks that the committed files are exactly these.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Final, NamedTuple

VENDOR_DIR: Final = Path(__file__).resolve().parents[1] / "connector" / "console" / "static" / "vendor"


class Vendored(NamedTuple):
    package: str  #: npm package
    version: str
    integrity: str  #: the npm registry's sha512 of the tarball
    files: dict[str, tuple[str, str]]  #: file in VENDOR_DIR → (path in the tarball, sha256 of the file)


VENDORED: Final = (
    Vendored("htmx.org", "2.0.11",
             "sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA==",
             {"htmx.min.js": ("package/dist/htmx.min.js",
                              "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"),
              "htmx.LICENSE": ("package/LICENSE", "")}),
    Vendored("chart.js", "4.6.1",
             "sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g==",
             {"chart.umd.min.js": ("package/dist/chart.umd.min.js",
                                   "87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2"),
              "chart.js.LICENSE.md": ("package/LICENSE.md", "")}),
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(target: Path = VENDOR_DIR) -> None:
    """``npm pack`` each pinned package, check its integrity, and copy its files into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for v in VENDORED:
            out = subprocess.run(["npm", "pack", f"{v.package}@{v.version}", "--json"], cwd=tmp, check=True,
                                 capture_output=True, text=True).stdout
            (packed,) = json.loads(out)
            tarball = Path(tmp) / packed["filename"]
            digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
            if digest != v.integrity:
                raise SystemExit(f"{v.package}@{v.version}: tarball integrity {digest} is not the pinned {v.integrity}")
            with tarfile.open(tarball) as tar:
                for name, (member, expected) in v.files.items():
                    data = tar.extractfile(member)
                    if data is None:
                        raise SystemExit(f"{v.package}@{v.version} has no {member}")
                    (target / name).write_bytes(data.read())
                    if expected and sha256(target / name) != expected:
                        raise SystemExit(f"{name}: sha256 differs from the pinned one (update VENDORED deliberately)")
            print(f"{v.package}@{v.version}: {', '.join(v.files)}")


if __name__ == "__main__":
    fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else VENDOR_DIR)
