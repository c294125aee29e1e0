#!/usr/bin/env bash
# Debian packages the integration tests need (headless Chromium + its WebDriver for the Prefect UI test,
# an OpenSSH server for the SSH-remote test). Idempotent: a fast no-op when everything is installed.
# Called by `make test`; safe to run by hand. Not root / no apt → say so and carry on (those tests then skip
# with a message naming the missing program).
set -euo pipefail

PKGS=(chromium chromium-driver openssh-server)

missing=()
for p in "${PKGS[@]}"; do
  # dpkg-query prints "install ok installed" only for a fully installed package
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup_system: ${PKGS[*]} already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_system: no apt-get here; install ${missing[*]} yourself (the tests that need them will skip)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "setup_system: not root; run 'sudo apt-get install ${missing[*]}' (the tests that need them will skip)"
    exit 0
  fi
else
  SUDO=()
fi

echo "setup_system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup_system: done"
