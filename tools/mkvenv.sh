#!/bin/sh
# Makes the project's virtual environment, or says in one line what is missing to make one.
# Debian and Ubuntu ship venv's pip bootstrap (ensurepip) apart from python3, in python3-venv
# (python3.X-venv): without it `python3 -m venv` stops after a paragraph of advice.
#   tools/mkvenv.sh VENV
set -eu
venv="$1"

# An existing venv with pip is kept: a changed requirements file needs pip, not a new venv.
if [ -x "$venv/bin/pip" ]; then exit 0; fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "venv: python3 not found: install Python 3 (Debian/Ubuntu: sudo apt install python3 python3-venv; macOS: brew install python or python.org), then run make again" >&2
    exit 1
fi
if out="$(python3 -m venv "$venv" 2>&1)"; then
    "$venv/bin/pip" install -q --upgrade pip
    exit 0
fi
case "$out" in
    *ensurepip*)
        # Debian's advice names the package for this Python, e.g. "apt install python3.11-venv".
        pkg="$(printf '%s\n' "$out" | sed -n 's/.*apt install \(python3[0-9.]*-venv\).*/\1/p' | head -n 1)"
        echo "venv: python3 cannot make a virtual environment (no ensurepip): sudo apt install ${pkg:-python3-venv}, then run make again" >&2 ;;
    *)
        printf '%s\n' "$out" >&2
        echo "venv: python3 -m venv $venv failed (its output is above)" >&2 ;;
esac
exit 1
