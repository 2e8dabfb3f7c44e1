#!/usr/bin/env bash
# Run a command in a private network namespace in which only loopback exists. The tests start real servers
# (Orthanc, uvicorn, chromium); Orthanc 1.10 has no bind-address option and listens on every interface, so
# it and the tests that talk to it run where no other interface exists. Needs root or user namespaces; without
# either the command runs as it is and the Orthanc tests skip, saying why.
set -euo pipefail
if [ "${RADLVLM_PRIVATE_NETNS:-}" = "1" ]; then
  exec "$@"
fi
inner='ip link set lo up && export RADLVLM_PRIVATE_NETNS=1 && exec "$@"'
if unshare -n true 2>/dev/null; then
  exec unshare -n bash -c "$inner" bash "$@"
fi
if unshare -rn true 2>/dev/null; then
  exec unshare -rn bash -c "$inner" bash "$@"
fi
echo "no private network namespace available: tests that need Orthanc will skip" >&2
exec "$@"
