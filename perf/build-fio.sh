#!/usr/bin/env bash
# Build fio with the libiscsi engine from Debian's fio source package and cache it.
#
# Usage: perf/build-fio.sh
# Prints the path of the cached fio binary on stdout (all other output goes to stderr).
# Cache: ${VIT_CACHE:-$HOME/.cache/vit}/fio/fio. Does nothing when the cached binary
# exists and already has the libiscsi engine. Needs root (apt) on the first run.
set -euo pipefail

CACHE="${VIT_CACHE:-$HOME/.cache/vit}/fio"
FIO="$CACHE/fio"

log() { echo "build-fio: $*" >&2; }

has_libiscsi() {
    [[ -x "$1" ]] && "$1" --enghelp 2>/dev/null | grep -qw libiscsi
}

if has_libiscsi "$FIO"; then
    echo "$FIO"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo -n"; fi

# Adds deb-src for every deb822 source that lacks it, in a separate file so the
# original stays untouched.
ensure_deb_src() {
    if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
        return 0
    fi
    local src=/etc/apt/sources.list.d/debian.sources
    local out=/etc/apt/sources.list.d/vit-deb-src.sources
    if [[ -f $src ]]; then
        log "adding deb-src entries to $out"
        sed -e 's/^Types:.*/Types: deb-src/' "$src" | $SUDO tee "$out" >/dev/null
    elif [[ -f /etc/apt/sources.list ]]; then
        log "adding deb-src lines to /etc/apt/sources.list.d/vit-deb-src.list"
        grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' |
            $SUDO tee /etc/apt/sources.list.d/vit-deb-src.list >/dev/null
    else
        log "no apt sources found"; return 1
    fi
    $SUDO apt-get update -qq >&2
}

# apt-get install, with an `apt-get update` first when the package lists are stale or absent.
apt_install() {
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2 ||
        { $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2; }
}

ensure_deb_src
log "installing build dependencies"
apt_install dpkg-dev build-essential pkg-config libiscsi-dev libaio-dev zlib1g-dev

mkdir -p "$CACHE/src"
cd "$CACHE/src"
srcdir=$(find . -maxdepth 1 -type d -name 'fio-*' | sort | tail -n 1)
if [[ -z $srcdir ]]; then
    log "fetching Debian's fio source package"
    apt-get source -qq fio >&2 || { $SUDO apt-get update -qq >&2 && apt-get source -qq fio >&2; }
    srcdir=$(find . -maxdepth 1 -type d -name 'fio-*' | sort | tail -n 1)
fi
[[ -n $srcdir ]] || { log "apt-get source fio produced no fio-* directory"; exit 1; }
cd "$srcdir"

log "configuring in $PWD"
./configure --enable-libiscsi >configure.log 2>&1 || { cat configure.log >&2; exit 1; }
if ! grep -qE '^iscsi engine +yes' configure.log; then
    grep -i iscsi configure.log >&2 || true
    log "configure did not enable the libiscsi engine (see $PWD/configure.log)"
    exit 1
fi
log "building"
make -j"$(nproc)" >make.log 2>&1 || { tail -n 40 make.log >&2; exit 1; }
install -m 0755 fio "$FIO.tmp"
mv "$FIO.tmp" "$FIO"
has_libiscsi "$FIO" || { log "built fio lacks the libiscsi engine"; exit 1; }
echo "$FIO"
