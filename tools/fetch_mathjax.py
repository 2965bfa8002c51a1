"""Fetch MathJax into `_mathjax/mathjax/`, so that the book renders formulas offline.

Sphinx loads MathJax from a CDN by default, and a book read without internet then shows
raw TeX. `_config.yml` points `mathjax_path` at this local copy instead. It comes from
the npm registry (`npm pack`, the package registry's own client), pinned to one version
and checked against its SHA-256, and is unpacked only once: `make book` and `make test`
call this script, which returns at once when the copy is there. `_mathjax/` is
git-ignored.

    python tools/fetch_mathjax.py
"""

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION = "3.2.2"
# sha256 of mathjax-3.2.2.tgz as the npm registry serves it (its sha1 is c754d7b4...).
SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"
TARGET = ROOT / "_mathjax" / "mathjax"
ENTRY = "tex-mml-chtml.js"


def main() -> int:
    if (TARGET / ENTRY).exists():
        return 0
    if shutil.which("npm") is None:
        print("fetch_mathjax: npm is needed once to fetch MathJax (install Node.js)")
        return 2
    TARGET.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=TARGET.parent) as folder:
        packed = subprocess.run(
            ["npm", "pack", "--silent", f"mathjax@{VERSION}"],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        tarball = Path(folder, f"mathjax-{VERSION}.tgz")
        if packed.returncode != 0 or not tarball.exists():
            message = (packed.stderr.strip().splitlines() or ["no tarball"])[-1]
            print(f"fetch_mathjax: npm pack mathjax@{VERSION} failed: {message}")
            return 2
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        if digest != SHA256:
            print(f"fetch_mathjax: {tarball.name} has sha256 {digest}, not {SHA256}")
            return 2
        with tarfile.open(tarball) as archive:
            # The "data" filter (Python >= 3.10.12) refuses links and paths outside.
            if hasattr(tarfile, "data_filter"):
                archive.extractall(folder, filter="data")
            else:
                archive.extractall(folder)
        # Move the complete folder into place last: an interrupted run leaves nothing.
        Path(folder, "package", "es5").rename(TARGET)
    print(f"fetch_mathjax: MathJax {VERSION} unpacked into {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
