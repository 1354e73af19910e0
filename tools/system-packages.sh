#!/bin/sh
# The system packages a make target needs, by their Debian names. Where there is apt they are
# installed (nothing is started as a service); elsewhere they are looked for, and what is missing
# is named in one line with the command that installs it on this system.
#   tools/system-packages.sh NAME... [--optional NAME...]
# --optional: what the target does without, and says so itself when it is absent (make sim runs
# the board on the host's clock without Debian's faketime; make bench skips what needs gcc or
# the Xtensa binutils): installed where apt is, not asked for elsewhere.
set -eu

required="" optional="" into=required
for arg in "$@"; do
    case "$arg" in
        --optional) into=optional ;;
        *) if [ "$into" = optional ]; then optional="$optional $arg"; else required="$required $arg"; fi ;;
    esac
done

if command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
    missing=""
    for pkg in $required $optional; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    [ -z "$missing" ] && exit 0
    echo "installing from the system packages:$missing" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
    exit 0
fi

# Without dpkg: is what the package provides here, where the project's tools look for it?
present() {
    case "$1" in
        # sim/net/broker.py looks in sbin too, which is often not on a user's PATH
        mosquitto) command -v mosquitto || [ -x /usr/sbin/mosquitto ] || [ -x /sbin/mosquitto ] ;;
        # the i386 dynamic loader, which a 32-bit MICROPYTHON needs
        libc6-i386) [ -e /lib/ld-linux.so.2 ] ;;
        *) command -v "$1" ;;
    esac >/dev/null 2>&1
}
missing=""
for pkg in $required; do
    present "$pkg" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0

# The install command of the first package manager found, with its names for the packages.
names() {  # names MANAGER: the missing packages as that manager calls them
    out=""
    for pkg in $missing; do
        case "$1:$pkg" in
            dnf:libc6-i386) pkg=glibc.i686 ;;
            zypper:libc6-i386) pkg=glibc-32bit ;;
            pacman:libc6-i386) pkg=lib32-glibc ;;
        esac
        out="$out $pkg"
    done
    echo "${out# }"
}
how=""
for manager in dnf zypper pacman apk brew; do
    command -v "$manager" >/dev/null 2>&1 || continue
    case "$manager" in
        dnf) how="sudo dnf install $(names dnf)" ;;
        zypper) how="sudo zypper install $(names zypper)" ;;
        pacman) how="sudo pacman -S $(names pacman)" ;;
        apk) how="sudo apk add $(names apk)" ;;
        brew) how="brew install $(names brew)" ;;
    esac
    break
done
[ -n "$how" ] || how="install what provides them (Fedora: sudo dnf install $(names dnf); Arch: sudo pacman -S $(names pacman); macOS: brew install $(names brew))"
echo "system packages:$missing not found, and there is no apt here to install them: $how, then run make again" >&2
exit 1
