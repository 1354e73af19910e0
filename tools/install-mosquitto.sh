#!/bin/sh
# Installs Mosquitto (broker and clients) from the system packages when it is missing.
# Tests and `make sim` start their own broker on loopback; the system service is not used.
set -eu
PATH="$PATH:/usr/sbin:/sbin"
command -v mosquitto >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 && exit 0
echo "installing mosquitto and openssl from the system packages" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto openssl >/dev/null
