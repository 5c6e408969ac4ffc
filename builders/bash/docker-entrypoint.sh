#!/usr/bin/env bash
# The official bash image's entrypoint: options (or nothing) go to bash, anything else is a command.
set -Eeuo pipefail
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  exec bash "$@"
fi
exec "$@"
