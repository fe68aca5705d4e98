#!/usr/bin/env bash
# scripts/deps.sh: make sure the prerequisites for `make test` and `make run` exist.
#
#   git           agents clone/fetch repositories; scripts/example-repo.sh
#   redis-server  >= 6; integration tests spawn their own on a unix socket
#                 (they never use a system Redis on 6379)
#   curl          scripts/simulate-push
#   openssl       scripts/simulate-push (HMAC-SHA256 signature)
#
# Quiet and exit 0 when everything is there. When something is missing and we
# are root with apt-get, install exactly the missing Debian packages; otherwise
# print what to install and exit 1. Nothing is ever downloaded outside apt.
# (Installing Debian's redis-server may start a system service on 6379; the
# tests don't use it.)
set -euo pipefail

readonly MIN_REDIS_MAJOR=6

say() { printf 'deps: %s\n' "$*" >&2; }

# redis_major prints the major version of redis-server on PATH, or nothing.
redis_major() {
	local out v
	out="$(redis-server --version 2>/dev/null || true)"
	# "Redis server v=7.0.15 sha=..."
	v="${out#*v=}"
	[[ "$v" != "$out" ]] || return 0
	printf '%s\n' "${v%%.*}"
}

# missing_packages prints the Debian packages needed, one per line.
missing_packages() {
	local cmd major
	for cmd in git curl openssl; do
		command -v "$cmd" >/dev/null 2>&1 || printf '%s\n' "$cmd"
	done
	if ! command -v redis-server >/dev/null 2>&1; then
		printf '%s\n' redis-server
	else
		major="$(redis_major)"
		if [[ ! "$major" =~ ^[0-9]+$ ]] || ((major < MIN_REDIS_MAJOR)); then
			say "redis-server is too old or unreadable ('$(redis-server --version 2>&1 | head -n1)'), need >= ${MIN_REDIS_MAJOR}"
			printf '%s\n' redis-server
		fi
	fi
}

mapfile -t missing < <(missing_packages)
((${#missing[@]} == 0)) && exit 0

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	say "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
	mapfile -t still < <(missing_packages)
	if ((${#still[@]} > 0)); then
		say "still missing after apt-get install: ${still[*]}"
		exit 1
	fi
	say "ok"
	exit 0
fi

say "missing prerequisites: ${missing[*]}"
say "install them, e.g. on Debian/Ubuntu:"
say "    sudo apt-get update && sudo apt-get install -y ${missing[*]}"
say "(redis-server must be version ${MIN_REDIS_MAJOR} or newer; it only needs to be on PATH, no service is used)"
exit 1
