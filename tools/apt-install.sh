#!/bin/sh
# Installs the named Debian packages that are missing (e.g. mosquitto for tests and make sim,
# binutils-xtensa-lx106 for the ESP32 estimate of make bench). Nothing is started as a service.
set -eu
missing=""
for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
echo "installing from the system packages:$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
