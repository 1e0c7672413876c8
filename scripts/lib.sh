# Shared set-up for the project scripts: sourced, not run.
# Installs what is missing (the wasm target), starts what is stopped (the
# local PostgreSQL), and builds the plugins. Every step says what it does.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export SWITCHYARD_PLUGIN_DIR="${SWITCHYARD_PLUGIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/wasm32-wasip2/plugin}"
PLUGINS=(role-mapping profile-creation stats-increment welcome-notification test-hostile)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_wasm_target() {
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        say "installing the wasm32-wasip2 target"
        rustup target add wasm32-wasip2
    fi
}

build_plugins() {
    ensure_wasm_target
    say "building plugins (wasm32-wasip2, profile 'plugin')"
    local args=()
    for p in "${PLUGINS[@]}"; do args+=(-p "$p"); done
    cargo build --target wasm32-wasip2 --profile plugin "${args[@]}"
}

# PostgreSQL on 127.0.0.1:5432 (the tests create and drop their own
# databases). Start the local cluster if it is installed but stopped.
ensure_postgres() {
    local url="${SWITCHYARD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
    if command -v pg_isready >/dev/null && ! pg_isready -q -d "$url"; then
        if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
            say "starting the local PostgreSQL cluster"
            pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
            for _ in $(seq 1 30); do pg_isready -q -d "$url" && break; sleep 1; done
        fi
    fi
    if command -v pg_isready >/dev/null && ! pg_isready -q -d "$url"; then
        echo "PostgreSQL is not reachable at $url: start it, or point SWITCHYARD_TEST_PG_URL at one (user with CREATE DATABASE)." >&2
        exit 1
    fi
}
