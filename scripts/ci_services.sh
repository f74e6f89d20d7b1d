#!/usr/bin/env bash
# The system packages the tests need beyond Python: PostgreSQL (tests/test_server.py runs a real
# tracking server on it) and Chromium (tests/test_ui.py drives the MLflow UI). Debian/Ubuntu.
# Idempotent: apt runs only when a package is missing.
set -euo pipefail

packages=(postgresql)
# A browser named by CHROMIUM (e.g. the google-chrome on GitHub's Ubuntu runners, where the
# chromium package is only a snap wrapper) stands in for Debian's chromium.
if [ -n "${CHROMIUM:-}" ] && [ -x "$CHROMIUM" ]; then
    echo "ci_services: using $CHROMIUM"
else
    packages+=(chromium)
fi

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for package in "${packages[@]}"; do
    installed "$package" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "ci_services: ${packages[*]} already installed"
    exit 0
fi

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

# The tests start their own PostgreSQL clusters, on free ports: keep the package from starting
# Debian's default cluster (it would hold port 5432 and memory for nothing). A policy-rc.d that
# denies every service start, for the duration of the install only.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

echo "ci_services: installing ${missing[*]}"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"

# Had a cluster started all the same (a service manager that ignores policy-rc.d), stop it.
if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _port status _rest; do
        if [ "$status" = online ]; then
            "${sudo[@]}" pg_ctlcluster "$version" "$cluster" stop
        fi
    done
fi
