#!/usr/bin/env bash
# scripts/example-repo.sh: a local "GitHub repository" to deploy in dev.
#
#   scripts/example-repo.sh DIR            create DIR/example.git (bare, branch main)
#                                          and DIR/example-src (work clone) if absent;
#                                          prints the absolute path of the bare repo
#   scripts/example-repo.sh DIR --commit   make one more commit (a timestamp file),
#                                          push it, print the new commit sha
#
# The repository holds deploy.sh (what `make run`'s example service runs on the
# local agent) and a README. Idempotent: running it again changes nothing.
# Works on a machine without any global git identity or init.defaultBranch.
# Progress goes to stderr; stdout carries only the path or the sha.
set -euo pipefail

usage() {
	printf 'usage: %s DIR [--commit]\n' "${0##*/}" >&2
	exit 2
}

dir=""
do_commit=0
for arg in "$@"; do
	case "$arg" in
	--commit) do_commit=1 ;;
	-h | --help) usage ;;
	-*) printf 'unknown flag: %s\n' "$arg" >&2; usage ;;
	*)
		[[ -z "$dir" ]] || usage
		dir="$arg"
		;;
	esac
done
[[ -n "$dir" ]] || usage

mkdir -p -- "$dir"
dir="$(cd -- "$dir" && pwd -P)"
bare="$dir/example.git"
src="$dir/example-src"

# A fixed identity, so commits work without ~/.gitconfig; never sign, never
# prompt, ignore any system-wide template hooks.
export GIT_AUTHOR_NAME="Otariinae Example"
export GIT_AUTHOR_EMAIL="example@otariinae.invalid"
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME"
export GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
export GIT_TERMINAL_PROMPT=0
git_() { git -c init.defaultBranch=main -c commit.gpgsign=false -c core.hooksPath=/dev/null "$@"; }

log() { printf 'example-repo: %s\n' "$*" >&2; }

write_files() {
	cat >"$src/deploy.sh" <<'DEPLOY'
#!/bin/sh
# deploy.sh: the example service's deploy script. The agent runs it in a
# checkout of the exact commit being deployed, with OTARIINAE_* variables set.
set -eu
env_name="${OTARIINAE_ENVIRONMENT:-unknown}"
service="${OTARIINAE_SERVICE:-example}"
commit="${OTARIINAE_COMMIT:-$(git rev-parse HEAD)}"
echo "environment: ${env_name}"
echo "commit:      ${commit}"
echo "checked out: $(git rev-parse HEAD)"
echo "LOG_LEVEL:   ${LOG_LEVEL:-unset}"
echo "deploying..."
sleep 1
echo "deployed ${service} $(printf '%.7s' "${commit}") to ${env_name}"
DEPLOY
	chmod 0755 "$src/deploy.sh"
	cat >"$src/README.md" <<'README'
# example

The example service deployed by `make run` (otariinae dev).

`deploy.sh` is what each agent runs, in a checkout of the commit being
deployed. Make a new commit and push it with

    scripts/example-repo.sh .otariinae/example --commit

then tell otariinae about it the way GitHub would:

    scripts/simulate-push
README
}

# 1. The bare repository ("GitHub").
if [[ ! -f "$bare/HEAD" ]]; then
	log "creating bare repository $bare"
	git_ init -q --bare -b main "$bare"
	# Let clients fetch a commit by sha, as GitHub does.
	git_ --git-dir="$bare" config uploadpack.allowReachableSHA1InWant true
fi

# 2. The work clone with the first commit.
if [[ ! -d "$src/.git" ]]; then
	log "cloning into $src"
	rm -rf -- "$src"
	git_ clone -q -- "$bare" "$src" 2> >(grep -v 'cloned an empty repository' >&2 || true)
fi
if ! git_ -C "$src" rev-parse -q --verify HEAD >/dev/null; then
	git_ -C "$src" symbolic-ref HEAD refs/heads/main
	if git_ --git-dir="$bare" rev-parse -q --verify refs/heads/main >/dev/null; then
		# The bare repo has history but the clone was (re)made empty: sync.
		git_ -C "$src" fetch -q origin main
		git_ -C "$src" reset -q --hard origin/main
	else
		log "initial commit"
		write_files
		git_ -C "$src" add deploy.sh README.md
		git_ -C "$src" commit -q -m "Initial commit: example service"
	fi
fi

# 3. Make sure the bare repo has what the clone has (idempotent).
if [[ "$(git_ -C "$src" rev-parse HEAD)" != "$(git_ --git-dir="$bare" rev-parse -q --verify refs/heads/main || true)" ]]; then
	git_ -C "$src" push -q origin main
fi

if ((do_commit)); then
	# Start from whatever the bare repo has, in case someone pushed there.
	git_ -C "$src" fetch -q origin main
	git_ -C "$src" reset -q --hard origin/main
	stamp="$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)"
	printf '%s\n' "$stamp" >"$src/last-change.txt"
	git_ -C "$src" add last-change.txt
	git_ -C "$src" commit -q -m "Change at $stamp"
	git_ -C "$src" push -q origin main
	sha="$(git_ -C "$src" rev-parse HEAD)"
	log "pushed $sha"
	printf '%s\n' "$sha"
	exit 0
fi

printf '%s\n' "$bare"
