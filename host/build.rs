//! Builds the built-in plugins (`plugins/`, a separate Cargo workspace) for
//! `wasm32-wasip2` and writes `builtin_plugins.rs` into `OUT_DIR`, which
//! embeds each component so `plugin = "builtin:NAME"` works anywhere.

use std::path::PathBuf;

include!("build_guests.rs");

const PLUGINS: &[&str] = &["check", "mask", "derive", "select"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    for dir in ["plugins", "sdk/src", "sdk/Cargo.toml", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed=build_guests.rs");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let wasm_dir = build_guests(
        &root.join("plugins/Cargo.toml"),
        &guest_target_dir(&out_dir),
        &[],
    );

    let mut generated = String::from(
        "/// (name, component bytes) of every built-in plugin.\npub static PLUGINS: &[(&str, &[u8])] = &[\n",
    );
    for name in PLUGINS {
        let file = wasm_dir.join(format!("weir_plugin_{name}.wasm"));
        assert!(
            file.is_file(),
            "built-in plugin `{name}` was not built at {}",
            file.display()
        );
        generated.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    generated.push_str("];\n");
    std::fs::write(out_dir.join("builtin_plugins.rs"), generated).unwrap();
}
