#!/usr/bin/env bash
# Make sure the system packages the demo and the tests need are present:
# python3-venv (Debian splits venv out of python3), mosquitto (the MQTT broker)
# socat (a second, independent pty/serial tool used in tests) and chromium (the status
# page's test renders it headless).
# As root, installs what is missing with apt-get; otherwise says exactly what to run.
set -euo pipefail
missing=()
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v socat >/dev/null 2>&1 || missing+=(socat)
# headless Chromium renders the local status page in its test (CONTRACT 11)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "missing system packages: ${missing[*]}" >&2
echo "install them with:  sudo apt-get install ${missing[*]}" >&2
exit 1
