#!/usr/bin/env bash
# Installs what only the benchmarks need, from Debian packages, when it is
# missing: Capistrano (ruby), which BenchmarkAllAtOnceNoBalancer compares
# drover's all-at-once deploy with. `make test` does not need it.
set -euo pipefail
command -v cap >/dev/null && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "bench-deps: missing capistrano; run as root or install it" >&2
  exit 1
fi
echo "bench-deps: installing capistrano"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends capistrano >/dev/null
