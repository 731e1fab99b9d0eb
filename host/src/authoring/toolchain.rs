//! `weir plugin build`: a plugin project into a component, with the
//! language's own tool: cargo (Rust), componentize-py (Python) or
//! componentize-js (JavaScript).
//!
//! Tools are looked for in this order: an environment variable naming the
//! tool, the `PATH` (or, for componentize-js, the project's
//! `node_modules`), then the weir tools directory that
//! `scripts/install-guest-tools` fills ([`tools_dir`]). A missing tool is an
//! error that names it and says how to install it.
//!
//! The built component is then loaded as weir would load it in a pipeline:
//! compiled (and stored in the artifact cache, so the first run starts from
//! it), its world checked against the manifest's kind, and instantiated once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{JS_COMPUTE_SDK, JS_SDK, JS_STATE_SDK, Language, MANIFEST, Manifest, PYTHON_SDK, WIT};
use crate::plugin::{Origin, Plugin, PluginKind};

/// The componentize-py version weir is tested with (PyPI).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// The `@bytecodealliance/componentize-js` version weir is tested with (npm).
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

const COMPONENTIZE_JS_PACKAGE: &str = "@bytecodealliance/componentize-js";
/// Node driver calling componentize-js's `componentize()` API.
const COMPONENTIZE_JS_DRIVER: &str = include_str!("componentize.mjs");

/// Where `scripts/install-guest-tools` installs componentize-py (a venv in
/// `venv/`) and componentize-js (`node/node_modules`): `$WEIR_TOOLS_DIR`,
/// else `$XDG_DATA_HOME/weir/tools`, else `$HOME/.local/share/weir/tools`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("weir/tools")
}

/// A built plugin.
#[derive(Debug, Clone)]
pub struct Built {
    /// The component file written.
    pub path: PathBuf,
    /// The manifest's name.
    pub name: String,
    /// The project's language.
    pub language: Language,
    /// The component's kind, checked against its world.
    pub kind: PluginKind,
    /// Size of the component, in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the component, lowercase hex.
    pub sha256: String,
    /// The tool that built it, with its version (`componentize-py 0.25.1`).
    pub tool: String,
    /// Time the language tool took.
    pub build_time: Duration,
    /// Time weir took to compile the component to native code (zero when
    /// it came from the artifact cache).
    pub compile_time: Duration,
}

/// Where and how `weir plugin build` writes.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The component file to write. Default: `DIR/dist/NAME.wasm`.
    pub out: Option<PathBuf>,
    /// Rust only: cargo's target directory. Default: cargo's own choice
    /// (`$CARGO_TARGET_DIR`, else `DIR/target`).
    pub cargo_target_dir: Option<PathBuf>,
}

/// Builds the project in `dir` as `options` say.
///
/// # Errors
/// A missing or malformed manifest; a missing tool (named, with how to
/// install it); the tool failing (with the tail of its output); or a result
/// that is not a component of the manifest's kind.
pub fn build(dir: &Path, options: &BuildOptions) -> Result<Built> {
    if !dir.is_dir() {
        bail!(
            "{} is not a directory (a plugin project holds {MANIFEST})",
            dir.display()
        );
    }
    let dir = &std::path::absolute(dir)?;
    let manifest = Manifest::read(dir)?;
    let plugin = &manifest.plugin;
    let out = match &options.out {
        Some(out) => std::path::absolute(out)?,
        None => dir.join("dist").join(format!("{}.wasm", plugin.name)),
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let started = Instant::now();
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let wit_dir = scratch.path().join("wit");
    write(&wit_dir.join("weir-plugin.wit"), WIT)?;
    let world = match plugin.state {
        false => plugin.kind.world().to_string(),
        true => format!("stateful-{}", plugin.kind.world()),
    };
    let world = world.as_str();
    let tool = match plugin.language {
        Language::Rust => build_rust(dir, options.cargo_target_dir.as_deref(), &out)?,
        Language::Python => build_python(dir, scratch.path(), &wit_dir, world, &out)?,
        Language::Js => build_js(dir, scratch.path(), &wit_dir, world, &out)?,
    };
    let build_time = started.elapsed();
    let bytes = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
    let loaded = Plugin::from_bytes(&out.display().to_string(), &bytes, Some(plugin.kind))
        .with_context(|| {
            format!(
                "{tool} wrote {}, but weir cannot use it as a {} plugin",
                out.display(),
                plugin.kind
            )
        })?;
    Ok(Built {
        path: out,
        name: plugin.name.clone(),
        language: plugin.language,
        kind: plugin.kind,
        size_bytes: bytes.len() as u64,
        sha256: loaded.sha256().to_string(),
        tool,
        build_time,
        compile_time: match loaded.origin() {
            Origin::Compiled => loaded.compile_time(),
            Origin::Cached => Duration::ZERO,
        },
    })
}

fn write(path: &Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// `name` on `PATH`, if there.
fn on_path(name: &str) -> Option<PathBuf> {
    in_path_list(name, std::env::var_os("PATH").as_deref())
}

/// `name` in the first directory of the `PATH`-style list that has it.
fn in_path_list(name: &str, paths: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(paths?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `command`, returning its output, or an error with the tail of what
/// it printed.
fn run(mut command: Command, tool: &str) -> Result<Output> {
    // The tools are Rust programs too: keep their failures to the message.
    command
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    let output = command
        .output()
        .with_context(|| format!("starting {tool} ({command:?})"))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        bail!("{tool} failed ({}):\n{}", output.status, tail(&text, 60));
    }
    Ok(output)
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn version_of(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

// -- Rust --------------------------------------------------------------------

fn build_rust(dir: &Path, target_dir: Option<&Path>, out: &Path) -> Result<String> {
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| on_path("cargo"))
        .context(
            "cargo was not found on PATH; install Rust with rustup (https://rustup.rs), \
             then `rustup target add wasm32-wasip2`",
        )?;
    if on_path("rustup").is_some() {
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .current_dir(dir)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !installed
            .lines()
            .any(|target| target.trim() == "wasm32-wasip2")
        {
            bail!(
                "the Rust target wasm32-wasip2 is not installed; run `rustup target add wasm32-wasip2`"
            );
        }
    }
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("{} is a Rust plugin but has no Cargo.toml", dir.display());
    }
    let mut command = Command::new(&cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .current_dir(dir);
    if let Some(target_dir) = target_dir {
        command.arg("--target-dir").arg(target_dir);
    }
    // A build started from inside another cargo build (a build script, a
    // test) must not inherit flags meant for that build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
    ] {
        command.env_remove(var);
    }
    let output = run(command, "cargo build --target wasm32-wasip2")?;
    let wasm = cdylib_artifact(&String::from_utf8_lossy(&output.stdout)).with_context(|| {
        format!(
            "cargo built {} but reported no .wasm library; is `crate-type = [\"cdylib\"]` in [lib]?",
            manifest.display()
        )
    })?;
    std::fs::copy(&wasm, out)
        .with_context(|| format!("copying {} to {}", wasm.display(), out.display()))?;
    Ok(version_of(&cargo, &["--version"]))
}

/// The `.wasm` file of the last cdylib artifact in cargo's JSON messages.
fn cdylib_artifact(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
        })
        .filter_map(|m| {
            m["filenames"]
                .as_array()?
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
        })
        .next()
}

// -- Python ------------------------------------------------------------------

fn componentize_py() -> Result<PathBuf> {
    find_componentize_py(
        std::env::var_os("WEIR_COMPONENTIZE_PY"),
        std::env::var_os("PATH").as_deref(),
        &tools_dir(),
    )
}

/// componentize-py: `given` (`$WEIR_COMPONENTIZE_PY`), else on `paths`,
/// else in the tools directory's venv.
fn find_componentize_py(
    given: Option<std::ffi::OsString>,
    paths: Option<&std::ffi::OsStr>,
    tools: &Path,
) -> Result<PathBuf> {
    if let Some(given) = given {
        let given = PathBuf::from(given);
        if !given.is_file() {
            bail!(
                "WEIR_COMPONENTIZE_PY is {}, which is not a file",
                given.display()
            );
        }
        return Ok(given);
    }
    let venv_bin = tools.join("venv/bin/componentize-py");
    in_path_list("componentize-py", paths)
        .or_else(|| venv_bin.is_file().then(|| venv_bin.clone()))
        .with_context(|| {
            format!(
                "componentize-py was not found (looked at $WEIR_COMPONENTIZE_PY, on PATH and at {}). \
                 Install it with `pip install componentize-py=={COMPONENTIZE_PY_VERSION}`, or run \
                 `scripts/install-guest-tools` from the weir repository",
                venv_bin.display()
            )
        })
}

fn build_python(
    dir: &Path,
    scratch: &Path,
    wit_dir: &Path,
    world: &str,
    out: &Path,
) -> Result<String> {
    if !dir.join("app.py").is_file() {
        bail!(
            "{} is a Python plugin but has no app.py (the module componentize-py builds)",
            dir.display()
        );
    }
    let program = componentize_py()?;
    let sdk_dir = scratch.join("python-sdk");
    write(&sdk_dir.join("weir/__init__.py"), PYTHON_SDK)?;
    let mut command = Command::new(&program);
    command
        .arg("--wit-path")
        .arg(wit_dir)
        .args(["--world", world, "componentize", "--python-path"])
        .arg(dir)
        .arg("--python-path")
        .arg(&sdk_dir)
        .arg("app")
        .arg("--output")
        .arg(out)
        .current_dir(dir);
    run(command, "componentize-py")?;
    let version = version_of(&program, &["--version"]);
    if !version.is_empty() && !version.ends_with(COMPONENTIZE_PY_VERSION) {
        tracing::warn!(%version, tested = COMPONENTIZE_PY_VERSION, "componentize-py version weir was not tested with");
    }
    Ok(if version.is_empty() {
        "componentize-py".into()
    } else {
        version
    })
}

// -- JavaScript --------------------------------------------------------------

/// The componentize-js package directory.
fn componentize_js_package(dir: &Path) -> Result<PathBuf> {
    let mut candidates = vec![];
    if let Some(dir) = std::env::var_os("WEIR_COMPONENTIZE_JS") {
        candidates.push(PathBuf::from(dir));
    }
    candidates.push(dir.join("node_modules").join(COMPONENTIZE_JS_PACKAGE));
    candidates.push(
        tools_dir()
            .join("node/node_modules")
            .join(COMPONENTIZE_JS_PACKAGE),
    );
    let installed = |c: &PathBuf| c.join("package.json").is_file();
    if let Some(found) = candidates.iter().find(|c| installed(c)) {
        return Ok(found.clone());
    }
    // npm's global root costs a process start: only asked as a last resort.
    let global = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join(COMPONENTIZE_JS_PACKAGE)
        });
    if let Some(global) = global {
        if installed(&global) {
            return Ok(global);
        }
        candidates.push(global);
    }
    bail!(
        "{COMPONENTIZE_JS_PACKAGE} was not found (looked in {}). Install it with \
         `npm install -g {COMPONENTIZE_JS_PACKAGE}@{COMPONENTIZE_JS_VERSION}`, or in the project \
         with `npm install --save-dev {COMPONENTIZE_JS_PACKAGE}@{COMPONENTIZE_JS_VERSION}`, or run \
         `scripts/install-guest-tools` from the weir repository",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The module `componentize()` lives in, from the package's `exports`.
fn componentize_js_entry(package: &Path) -> Result<(PathBuf, String)> {
    let manifest = package.join("package.json");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let entry = json["exports"]["import"]
        .as_str()
        .or_else(|| json["exports"]["."]["import"].as_str())
        .unwrap_or("./src/componentize.js");
    let version = json["version"].as_str().unwrap_or_default().to_string();
    Ok((package.join(entry), version))
}

/// Copies the project's sources (not `node_modules`, `dist` or hidden
/// entries) into `to`, so the build sees exactly one `weir.js`: the SDK of
/// this weir.
fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name_text = name.to_string_lossy();
        if name_text.starts_with('.')
            || ["node_modules", "dist", "target"].contains(&name_text.as_ref())
        {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        if entry.file_type()?.is_dir() {
            copy_sources(&source, &target)?;
        } else {
            std::fs::copy(&source, &target)
                .with_context(|| format!("copying {}", source.display()))?;
        }
    }
    Ok(())
}

fn build_js(dir: &Path, scratch: &Path, wit_dir: &Path, world: &str, out: &Path) -> Result<String> {
    if !dir.join("app.js").is_file() {
        bail!(
            "{} is a JavaScript plugin but has no app.js (the module componentize-js builds)",
            dir.display()
        );
    }
    let node = on_path("node").context(
        "node (Node.js 18 or later) was not found on PATH; install Node.js and npm \
         (Debian: `apt-get install nodejs npm`)",
    )?;
    let (entry, version) = componentize_js_entry(&componentize_js_package(dir)?)?;
    let sources = scratch.join("js");
    copy_sources(dir, &sources)?;
    write(&sources.join("weir.js"), JS_SDK)?;
    write(&sources.join("weir-state.js"), JS_STATE_SDK)?;
    write(&sources.join("weir-compute.js"), JS_COMPUTE_SDK)?;
    let driver = scratch.join("componentize.mjs");
    write(&driver, COMPONENTIZE_JS_DRIVER)?;
    let mut command = Command::new(node);
    command
        .arg(&driver)
        .arg(&entry)
        .arg(sources.join("app.js"))
        .arg(wit_dir)
        .arg(world)
        .arg(out)
        .current_dir(&sources);
    run(command, "componentize-js")?;
    Ok(format!("componentize-js {version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_script_pins_the_versions_weir_is_tested_with() {
        let script = include_str!("../../../scripts/install-guest-tools");
        assert!(script.contains(&format!(
            "COMPONENTIZE_PY_VERSION={COMPONENTIZE_PY_VERSION}\n"
        )));
        assert!(script.contains(&format!(
            "COMPONENTIZE_JS_VERSION={COMPONENTIZE_JS_VERSION}\n"
        )));
    }

    #[test]
    fn the_wasm_file_comes_from_the_cdylib_artifact() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"]},"filenames":["/t/libdep.rlib"]}"#,
            "not json",
            r#"{"reason":"compiler-artifact","target":{"kind":["cdylib"]},"filenames":["/t/wasm32-wasip2/release/my_plugin.wasm"]}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            cdylib_artifact(&messages),
            Some(PathBuf::from("/t/wasm32-wasip2/release/my_plugin.wasm"))
        );
        assert_eq!(cdylib_artifact(r#"{"reason":"build-finished"}"#), None);
    }

    #[test]
    fn a_missing_componentize_py_is_named_with_how_to_install_it() {
        let tools = tempfile::tempdir().unwrap();
        let error = find_componentize_py(None, Some("".as_ref()), tools.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("componentize-py was not found")
                && error.contains(&format!(
                    "pip install componentize-py=={COMPONENTIZE_PY_VERSION}"
                ))
                && error.contains("scripts/install-guest-tools"),
            "{error}"
        );
        let error = find_componentize_py(Some("/no/such/tool".into()), None, tools.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("WEIR_COMPONENTIZE_PY is /no/such/tool"),
            "{error}"
        );
        let bin = tools.path().join("venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("componentize-py"), "").unwrap();
        assert_eq!(
            find_componentize_py(None, Some("".as_ref()), tools.path()).unwrap(),
            bin.join("componentize-py")
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
