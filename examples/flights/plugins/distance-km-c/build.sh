#!/usr/bin/env bash
# Builds distance_km.c into a weir transform component:
#   1. `wit-bindgen c` generates the bindings of the `transformer` world
#      from weir's WIT (contract 0.2.0) (transformer.h/.c and the component-type object);
#   2. clang compiles for wasm32-wasi (Debian's wasi-libc) as a reactor;
#   3. `wasm-tools component new` wraps the core module into a component,
#      adapting WASI preview 1 to preview 2 with the reactor adapter from
#      the crates.io crate wasi-preview1-component-adapter-provider.
# Usage: build.sh [OUT.wasm]   (default: dist/distance-km-c.wasm)
# Tools: scripts/install-guest-tools installs all of them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
out="${1:-$here/dist/distance-km-c.wasm}"
adapter_version="48.0.1"
# scripts/install-guest-tools puts wit-bindgen and wasm-tools here.
tools="${WEIR_TOOLS_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/weir/tools}"
PATH="$PATH:$tools/cargo/bin"

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "build.sh: \`$1\` not found; $2" >&2
    exit 1
  }
}
clang="$(command -v clang-14 || command -v clang || true)"
[ -n "$clang" ] || need clang "install it: apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 (or run scripts/install-guest-tools)"
need wit-bindgen "install it: cargo install --locked wit-bindgen-cli@0.63.0 (or run scripts/install-guest-tools)"
need wasm-tools "install it: cargo install --locked wasm-tools@1.263.0 (or run scripts/install-guest-tools)"
need cargo "install Rust from https://rustup.rs"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The preview-1 adapter: fetch the crate that ships it, then find its files.
mkdir -p "$work/adapter/src"
cat >"$work/adapter/Cargo.toml" <<TOML
[package]
name = "fetch-adapter"
version = "0.0.0"
edition = "2021"
[dependencies]
wasi-preview1-component-adapter-provider = "=$adapter_version"
[workspace]
TOML
touch "$work/adapter/src/lib.rs"
cargo fetch --quiet --manifest-path "$work/adapter/Cargo.toml"
crate_dir="$(cargo metadata --quiet --format-version 1 --manifest-path "$work/adapter/Cargo.toml" |
  python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="wasi-preview1-component-adapter-provider"))')"
adapter="$crate_dir/artefacts/wasi_snapshot_preview1.reactor.wasm"

wit-bindgen c "$repo/wit" --world transformer --out-dir "$work/gen" >/dev/null 2>&1
"$clang" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror \
  -I "$work/gen" -o "$work/core.wasm" \
  "$here/distance_km.c" "$work/gen/transformer.c" "$work/gen/transformer_component_type.o"
mkdir -p "$(dirname "$out")"
wasm-tools component new "$work/core.wasm" --adapt "wasi_snapshot_preview1=$adapter" -o "$out"
echo "built $out"
