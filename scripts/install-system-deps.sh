#!/usr/bin/env bash
# Install the Debian packages the tests need: the real Slurm test cluster's
# (tests/slurm_cluster.py), and Chromium with a font for the report pages' browser tests
# (tests/browser.py drives /usr/bin/chromium headless).
#
# Idempotent and quick when everything is there. Installs only; it starts no service:
# the test cluster runs its own private daemons, on its own ports and sockets, so the
# system's slurm/munge/mariadb services are neither needed nor in the way.
#
# Usage (as root, or with sudo available):  scripts/install-system-deps.sh
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server chromium fonts-dejavu-core)

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

missing=()
for package in "${PACKAGES[@]}"; do
    is_installed "$package" || missing+=("$package")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-system-deps: all present: ${PACKAGES[*]}"
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-system-deps: run as root" >&2; exit 1; }
    SUDO=(sudo)
fi

# Keep postinst scripts from starting services, unless the machine already has a
# policy (containers usually do). Removed again on exit, only if we created it.
POLICY=/usr/sbin/policy-rc.d
if [[ ! -e $POLICY ]]; then
    "${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
    trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
fi

LOG=$(mktemp /tmp/install-system-deps.XXXXXX.log)

apt_get() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >>"$LOG" 2>&1
}

fail() {
    echo "install-system-deps: $1 failed; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
}

updated=0
update_lists() {
    echo "install-system-deps: apt-get update"
    apt_get update || fail "apt-get update"
    updated=1
}

# The package lists are refreshed only when needed: when apt does not know a package
# (a fresh image often ships without lists), or when an install fails on stale lists.
for package in "${missing[@]}"; do
    if ! apt-cache show "$package" >/dev/null 2>&1; then
        update_lists
        break
    fi
done

echo "install-system-deps: installing ${missing[*]}"
if ! apt_get install --no-install-recommends "${missing[@]}"; then
    [[ $updated -eq 1 ]] && fail "apt-get install"
    update_lists
    apt_get install --no-install-recommends "${missing[@]}" || fail "apt-get install"
fi
rm -f "$LOG"
echo "install-system-deps: installed ${missing[*]}"
