// Shared by `host/build.rs` and `tests/build.rs` (through `include!`):
// building guest components for wasm32-wasip2 from a build script.

/// A directory shared by every profile of the host build, so the guests are
/// compiled once: `<target>/weir-guest`, found by walking up from `OUT_DIR`
/// to the directory Cargo marks with `CACHEDIR.TAG`.
fn guest_target_dir(out_dir: &std::path::Path) -> std::path::PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .unwrap_or(out_dir)
        .join("weir-guest")
}

/// Runs `cargo build --release --target wasm32-wasip2 <extra>` on a guest
/// workspace and returns the directory holding the `.wasm` files.
fn build_guests(manifest: &std::path::Path, target_dir: &std::path::Path, extra: &[&str]) -> std::path::PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(extra);
    // Flags meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
    ] {
        command.env_remove(var);
    }
    // wasm SIMD (supported by wasmtime) lets LLVM vectorise guest loops; the
    // target leaves it off by default.
    command.env("CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS", "-C target-feature=+simd128");
    let status = command.status().expect("running cargo for the wasm32-wasip2 guests");
    assert!(
        status.success(),
        "building {} for wasm32-wasip2 failed; is the target installed? (`rustup target add wasm32-wasip2`)",
        manifest.display()
    );
    target_dir.join("wasm32-wasip2/release")
}
