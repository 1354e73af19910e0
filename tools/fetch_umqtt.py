"""Install umqtt.simple and umqtt.robust into lib/umqtt from their PyPI sdists.

The sdists have no setup.py that pip could build (simple 1.3.4 ships bare sources), so we fetch the
pinned files from PyPI's JSON API, check their SHA-256 and copy the modules out unchanged.
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
    "micropython-umqtt.robust": (
        "1.0",
        "22a1b8c8e1128281efb13b3020927d07e33c5b747869da2cd77d37983a9ea002",
        "umqtt/robust.py",
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
