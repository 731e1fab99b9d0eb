//! `weir plugin new`: a plugin project that builds as is.
//!
//! Each language × kind has a small working example (`host/templates/`):
//! a transform that upper-cases the text columns named in its config, a
//! validator that flags nulls in the columns named in its config, and an
//! extractor that parses `key=value` lines.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{JS_SDK, Language, MANIFEST, check_name};
use crate::plugin::PluginKind;

/// What `weir plugin new` was asked for.
#[derive(Debug, Clone)]
pub struct NewOptions {
    /// Plugin name; also the directory created under `parent`.
    pub name: String,
    /// Language of the project.
    pub language: Language,
    /// Plugin kind (world).
    pub kind: PluginKind,
    /// Directory to create the project in (the project is `parent/name`).
    pub parent: PathBuf,
    /// Rust only: the `weir-sdk` crate's directory. Default: `$WEIR_SDK_PATH`,
    /// else the `sdk/` of the weir checkout this binary was built from.
    pub sdk_path: Option<PathBuf>,
}

const MANIFEST_TEMPLATE: &str = include_str!("../../templates/manifest.toml");
const RUST_CARGO: &str = include_str!("../../templates/rust/Cargo.toml");

fn source_template(language: Language, kind: PluginKind) -> &'static str {
    use Language::*;
    use PluginKind::*;
    match (language, kind) {
        (Rust, Transform) => include_str!("../../templates/rust/transform.rs"),
        (Rust, Validate) => include_str!("../../templates/rust/validate.rs"),
        (Rust, Extract) => include_str!("../../templates/rust/extract.rs"),
        (Python, Transform) => include_str!("../../templates/python/transform.py"),
        (Python, Validate) => include_str!("../../templates/python/validate.py"),
        (Python, Extract) => include_str!("../../templates/python/extract.py"),
        (Js, Transform) => include_str!("../../templates/js/transform.js"),
        (Js, Validate) => include_str!("../../templates/js/validate.js"),
        (Js, Extract) => include_str!("../../templates/js/extract.js"),
    }
}

/// The `weir-sdk` crate directory a new Rust project depends on.
///
/// # Errors
/// When none is given and neither `$WEIR_SDK_PATH` nor the build-time
/// checkout's `sdk/` exists.
fn rust_sdk_path(given: Option<&Path>) -> Result<PathBuf> {
    let candidate = given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("WEIR_SDK_PATH").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk"));
    if !candidate.join("Cargo.toml").is_file() {
        bail!(
            "the Rust SDK (weir-sdk) is not at {}; pass --sdk-path DIR (or set WEIR_SDK_PATH) \
             to the `sdk/` directory of a weir checkout",
            candidate.display()
        );
    }
    candidate
        .canonicalize()
        .with_context(|| format!("resolving {}", candidate.display()))
}

fn fill(template: &str, options: &NewOptions, sdk_path: &str) -> String {
    template
        .replace("{{name}}", &options.name)
        .replace("{{language}}", options.language.as_str())
        .replace("{{kind}}", options.kind.as_str())
        .replace("{{world}}", options.kind.world())
        // TOML basic strings: a Windows path's backslashes must be escaped.
        .replace("{{sdk_path}}", &sdk_path.replace('\\', "\\\\"))
}

/// The files of a new project, as (relative path, contents).
fn files(options: &NewOptions) -> Result<Vec<(&'static str, String)>> {
    let source = source_template(options.language, options.kind);
    let mut files = vec![
        (MANIFEST, fill(MANIFEST_TEMPLATE, options, "")),
        ("README.md", readme(options)),
    ];
    match options.language {
        Language::Rust => {
            let sdk = rust_sdk_path(options.sdk_path.as_deref())?;
            let sdk = sdk.to_string_lossy();
            files.push(("Cargo.toml", fill(RUST_CARGO, options, &sdk)));
            files.push(("src/lib.rs", fill(source, options, "")));
            files.push((".gitignore", "/target\n/dist\n".into()));
        }
        Language::Python => {
            files.push(("app.py", fill(source, options, "")));
            files.push((".gitignore", "/dist\n__pycache__/\n".into()));
        }
        Language::Js => {
            files.push(("app.js", fill(source, options, "")));
            // For editors; `weir plugin build` always uses its own copy.
            files.push(("weir.js", JS_SDK.to_string()));
            files.push((".gitignore", "/dist\n/node_modules\n".into()));
        }
    }
    Ok(files)
}

fn readme(options: &NewOptions) -> String {
    let source = match options.language {
        Language::Rust => "src/lib.rs",
        Language::Python => "app.py",
        Language::Js => "app.js",
    };
    let config = match options.kind {
        PluginKind::Transform => "config = { columns = [\"origin\"] }",
        PluginKind::Validate => "config = { required = [\"tailnum\"] }",
        PluginKind::Extract => "",
    };
    let stage = if options.kind == PluginKind::Extract {
        format!(
            "[source]\nformat = \"extract\"\npath = \"data/*.txt\"\n\n[source.extract]\nplugin = \"{name}/dist/{name}.wasm\"",
            name = options.name
        )
    } else {
        format!(
            "[[stages]]\nname = \"{name}\"\nkind = \"{kind}\"\nplugin = \"{name}/dist/{name}.wasm\"\n{config}",
            name = options.name,
            kind = options.kind,
        )
    };
    format!(
        "# {name}\n\nA weir {kind} plugin in {language}. The code is in `{source}`.\n\n\
         Build it into a WebAssembly component (`dist/{name}.wasm`):\n\n```sh\nweir plugin build .\n```\n\n\
         Use it in a pipeline file next to this directory:\n\n```toml\n{stage}\n```\n\n\
         See docs/plugins-{language}.md in the weir repository for the SDK.\n",
        name = options.name,
        kind = options.kind,
        language = options.language,
    )
}

/// Creates the project `parent/name` and returns its path.
///
/// # Errors
/// When the name is invalid, the directory exists and is not empty, the
/// Rust SDK cannot be found (Rust only), or a file cannot be written.
pub fn create(options: &NewOptions) -> Result<PathBuf> {
    check_name(&options.name).map_err(|problem| anyhow::anyhow!("plugin name: {problem}"))?;
    let dir = options.parent.join(&options.name);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    for (relative, contents) in files(options)? {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}
