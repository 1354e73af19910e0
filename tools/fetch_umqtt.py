"""Install umqtt.simple into lib/umqtt from its PyPI sdist.

The sdist has no setup.py that pip could build (simple 1.3.4 ships bare sources), so we fetch the
pinned file from PyPI's JSON API, check its SHA-256 and copy the module out unchanged. umqtt.robust
is not installed: the node does its own reconnecting (docs/ARCHITECTURE.md), and a module left in
lib/umqtt from an earlier install is removed, so it is neither bundled nor frozen.
"""

import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGES = {
    # name: (version, sha256 of the sdist, members to extract)
    "micropython-umqtt.simple": (
        "1.3.4",
        "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
        "umqtt/simple.py",
    ),
}
PYPI_JSON = "https://pypi.org/pypi/{name}/json"


def fetch_sdist(name, version, sha256):
    with urllib.request.urlopen(PYPI_JSON.format(name=name), timeout=60) as r:
        meta = json.load(r)
    urls = [u for u in meta["releases"].get(version, []) if u["packagetype"] == "sdist"]
    if not urls:
        raise SystemExit(f"{name} {version}: PyPI lists no sdist")
    with urllib.request.urlopen(urls[0]["url"], timeout=60) as r:
        data = r.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{name} {version}: sha256 {digest} does not match the pinned {sha256}")
    return data


def main(dest):
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    installed = {"__init__.py"} | {Path(member).name for _, _, member in PACKAGES.values()}
    for old in sorted(dest.glob("*.py")):
        if old.name not in installed:
            old.unlink()
            print(f"lib: removed {old} (no longer installed)")
    for name, (version, sha256, member) in PACKAGES.items():
        data = fetch_sdist(name, version, sha256)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            (entry,) = [m for m in tar.getmembers() if m.name.endswith("/" + member)]
            source = tar.extractfile(entry).read()
        (dest / Path(member).name).write_bytes(source)
        print(f"lib: {name} {version} -> {dest / Path(member).name}")
    (dest / "__init__.py").write_text("")


if __name__ == "__main__":
    main(sys.argv[1])
