//! Builds the test components (`tests/components/examples/*.rs`) for
//! `wasm32-wasip2` and exposes each as a path constant in `components.rs`.

use std::path::PathBuf;

include!("../host/build_guests.rs");

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    for dir in [
        "tests/components/src",
        "tests/components/examples",
        "tests/components/Cargo.toml",
        "sdk/src",
        "sdk/Cargo.toml",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("host/build_guests.rs").display()
    );
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let wasm_dir = build_guests(
        &root.join("tests/components/Cargo.toml"),
        &guest_target_dir(&out_dir),
        &["--examples"],
    )
    .join("examples");
    let mut names: Vec<String> = std::fs::read_dir(root.join("tests/components/examples"))
        .unwrap()
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_string))
        .collect();
    names.sort();
    let mut generated = String::new();
    for name in names {
        let file = wasm_dir.join(format!("{name}.wasm"));
        assert!(
            file.is_file(),
            "test component `{name}` was not built at {}",
            file.display()
        );
        generated.push_str(&format!(
            "/// `tests/components/examples/{name}.rs`, built for wasm32-wasip2.\npub const {}: &str = {:?};\n",
            name.to_uppercase(),
            file.display().to_string()
        ));
    }
    let plugin_builds = guest_target_dir(&out_dir).with_file_name("weir-plugin-builds");
    generated.push_str(&format!(
        "/// Where the tests build plugin projects (`weir plugin build`).\npub const PLUGIN_BUILD_DIR: &str = {:?};\n",
        plugin_builds.display().to_string()
    ));
    std::fs::write(out_dir.join("components.rs"), generated).unwrap();
}
