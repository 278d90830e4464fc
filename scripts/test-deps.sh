#!/usr/bin/env bash
# Installs what drover's tests run against, from Debian packages, when it
# is missing: OpenSSH server (push deploys), PostgreSQL and MariaDB (the
# control server's stores), iproute2 (network namespaces for multi-host tests),
# HAProxy (the load balancer rolling deploys drain nodes from) and socat
# (the scripts that drive it in the `command` load balancer tests).
set -euo pipefail
need=()
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v ip >/dev/null || need+=(iproute2)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v mariadbd >/dev/null || [[ -x /usr/sbin/mariadbd ]] || need+=(mariadb-server)
[[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
command -v socat >/dev/null || need+=(socat)
if ((${#need[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "test-deps: missing ${need[*]}; run as root or install them" >&2
  exit 1
fi
echo "test-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts these services on install; the tests run their own.
for svc in postgresql mariadb ssh haproxy; do
  service "$svc" stop >/dev/null 2>&1 || true
done
