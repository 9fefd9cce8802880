#!/usr/bin/env bash
# One command for the benchmark suite:  bash benchmarks/run.sh [--quick|--smoke]
# Creates benchmarks/.venv (the peers, and this project's compiled build: what the
# Dockerfile runs in production), installs wrk and nginx with apt-get when missing,
# then runs benchmarks/run.py with the same arguments.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv"
python="${PYTHON:-python3}"

need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "[bench] installing ${need_apt[*]} with apt-get" >&2
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp="$venv/.installed"
ours_stamp="$venv/.installed-ours"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# Reinstall when the requirements or the project's metadata changed.
want="$(cat "$here"/requirements*.txt "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[bench] installing the peers into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
    # Optional contenders, one by one: one that cannot be installed here is left out (the
    # report names it as skipped), and the rest of the suite still runs.
    grep -v '^\s*#' "$here/requirements-optional.txt" | while read -r package; do
        [ -n "$package" ] || continue
        "$venv/bin/python" -m pip install --quiet "$package" \
            || echo "[bench] $package cannot be installed here; its rows will be skipped" >&2
    done
    echo "$want" > "$stamp"
fi
# Our server: the compiled build (a copy, not editable), rebuilt when its source changed.
# Where it cannot be built (no C compiler), the Python build; the report says which ran.
ours="$want $(cd "$root" && find kamisama_server -name '*.py' | sort | xargs cat | sha256sum)"
if [ ! -f "$ours_stamp" ] || [ "$(cat "$ours_stamp")" != "$ours" ]; then
    echo "[bench] building kamisama-server's compiled engine into $venv" >&2
    "$venv/bin/python" -m pip install --quiet "$root"  # its dependencies, if new
    # (CLEAN_HOOKS_AFTER: mypyc builds inside the checkout; its .so files must not stay
    # there, where an editable install would import them instead of the sources.)
    if ! HATCH_BUILD_HOOK_ENABLE_MYPYC=1 HATCH_BUILD_CLEAN_HOOKS_AFTER=1 "$venv/bin/python" -m pip install --quiet \
            --force-reinstall --no-deps "$root"; then
        echo "[bench] the compiled build failed here: benchmarking the Python build" >&2
        "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$root"
    fi
    echo "$ours" > "$ours_stamp"
fi
"$venv/bin/kamisama-serve" --version >&2
exec "$venv/bin/python" "$here/run.py" "$@"
