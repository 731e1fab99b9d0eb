//! Tenant confinement: whether a path is inside a tenant's directory, with
//! `.`/`..` resolved and symbolic links followed, and which paths of a
//! pipeline file are not.

use std::path::{Component, Path, PathBuf};

use crate::config::PipelineConfig;

/// Which of a pipeline's output paths [`outside_paths`] checks: the
/// service file may replace the sink's and the quarantine's paths (and
/// checks its own).
#[derive(Debug, Clone, Copy)]
pub struct Outputs {
    /// Check `[sink] path`.
    pub sink: bool,
    /// Check `[quarantine] path`.
    pub quarantine: bool,
    /// Check where a `weir run` of the pipeline keeps its state beside
    /// the sink: the checkpoint directory, the state store and the run
    /// history (a scheduled run's; a served pipeline keeps its state in
    /// the service's state directory).
    pub run_state: bool,
}

/// Every file or directory that `config` (read from pipeline file `file`)
/// names outside `dir`, with its key: the source path, the sink and
/// quarantine paths and the paths derived from them (as `outputs` says),
/// the state directory, the lineage file, each plugin (the extract
/// plugin's too), reference table, `latest` operator table and granted
/// directory. An input path that is a glob is checked as written and as
/// each file it matches now, so a link met while matching is followed.
pub fn outside_paths(
    config: &PipelineConfig,
    file: &Path,
    outputs: Outputs,
    dir: &Path,
) -> Vec<(String, PathBuf)> {
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut paths = Vec::new();
    input("source.path", base.join(&config.source.path), &mut paths);
    if outputs.sink {
        paths.push(("sink.path".into(), base.join(&config.sink.path)));
    }
    if outputs.quarantine {
        paths.push(("quarantine.path".into(), base.join(&config.quarantine.path)));
    }
    if outputs.run_state {
        paths.push(("sink.path".into(), config.sink.checkpoint_dir(&base)));
        paths.push(("pipeline.state_dir".into(), config.state_store(&base)));
        paths.push(("pipeline.state_dir".into(), config.history_file(file)));
    }
    if let Some(state) = &config.pipeline.state_dir {
        paths.push(("pipeline.state_dir".into(), base.join(state)));
    }
    if let Some(lineage) = &config.lineage.file {
        paths.push(("lineage.file".into(), base.join(lineage)));
    }
    let granted = |key: &str, grants: &crate::plugin::Grants, paths: &mut Vec<_>| {
        for (guest, host) in &grants.read_dirs {
            paths.push((
                format!("{key}.capabilities.read_dirs.\"{guest}\""),
                base.join(host),
            ));
        }
    };
    if let Some(extract) = &config.source.extract {
        paths.push(("source.extract.plugin".into(), base.join(&extract.plugin)));
        granted("source.extract", &extract.capabilities, &mut paths);
    }
    for (i, stage) in config.stages.iter().enumerate() {
        if !stage.plugin.starts_with("builtin:") {
            paths.push((format!("stages[{i}].plugin"), base.join(&stage.plugin)));
        }
        for (table, path) in &stage.tables {
            input(
                &format!("stages[{i}].tables.{table}"),
                base.join(path),
                &mut paths,
            );
        }
        granted(&format!("stages[{i}]"), &stage.capabilities, &mut paths);
    }
    for (i, operator) in config.operators.iter().enumerate() {
        // A malformed table is the config check's to report.
        if let Some(Ok(table)) = operator.table.as_ref().map(crate::config::table_source) {
            input(
                &format!("operators[{i}].table.path"),
                base.join(&table.path),
                &mut paths,
            );
        }
    }
    paths
        .into_iter()
        .filter(|(_, path)| !is_inside(dir, path))
        .collect()
}

/// Adds input `path` (under `key`) to `paths`, and when it is a glob,
/// each file it matches.
fn input(key: &str, path: PathBuf, paths: &mut Vec<(String, PathBuf)>) {
    let text = path.to_string_lossy().into_owned();
    if text.contains(['*', '?', '['])
        && let Ok(matches) = glob::glob(&text)
    {
        paths.extend(matches.filter_map(Result::ok).map(|m| (key.to_string(), m)));
    }
    paths.push((key.to_string(), path));
}

/// Whether `path` is `dir` or inside it, judged on the paths with `.` and
/// `..` resolved and, where they exist, symbolic links followed (so a link
/// pointing out of the tenant's directory is outside).
pub fn is_inside(dir: &Path, path: &Path) -> bool {
    match (resolve(dir), resolve(path)) {
        (Some(dir), Some(path)) => path.starts_with(dir),
        _ => false,
    }
}

/// `path` made absolute, its longest existing prefix canonicalized and the
/// rest normalized lexically; `None` when `..` climbs above the root.
fn resolve(path: &Path) -> Option<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut existing = absolute.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        rest.push(existing.file_name()?.to_os_string());
        existing = existing.parent()?.to_path_buf();
    }
    let mut resolved = existing.canonicalize().ok()?;
    for part in rest.iter().rev() {
        for component in Path::new(part).components() {
            match component {
                // `pop` climbs one level; failing means above the root.
                Component::ParentDir if !resolved.pop() => return None,
                Component::Normal(name) => resolved.push(name),
                _ => {}
            }
        }
    }
    Some(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_resolves_dots_and_links() {
        let root = tempfile::tempdir().unwrap();
        let tenant = root.path().join("acme");
        std::fs::create_dir_all(tenant.join("plugins")).unwrap();
        assert!(is_inside(&tenant, &tenant.join("plugins/x.wasm")));
        assert!(is_inside(&tenant, &tenant.join("new/dir/out")));
        assert!(!is_inside(&tenant, &tenant.join("../other/x.wasm")));
        assert!(!is_inside(&tenant, &tenant.join("plugins/../../x")));
        assert!(!is_inside(&tenant, Path::new("/etc/passwd")));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.path(), tenant.join("escape")).unwrap();
            assert!(!is_inside(&tenant, &tenant.join("escape/secret")));
        }
    }

    #[cfg(unix)]
    #[test]
    fn tables_globs_and_run_state_are_checked() {
        let root = tempfile::tempdir().unwrap();
        let tenant = root.path().join("acme");
        let secret = root.path().join("secret");
        std::fs::create_dir_all(tenant.join("landing")).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("keys.csv"), "id\n1\n").unwrap();
        // A link inside the tenant's dir that a glob walks through.
        std::os::unix::fs::symlink(&secret, tenant.join("landing/day")).unwrap();
        let file = tenant.join("p.toml");
        let config: PipelineConfig = toml::from_str(
            r#"
[source]
format = "csv"
path = "landing/*/*.csv"

[[operators]]
name = "planes"
kind = "latest"
key = ["id"]
table = { format = "csv", path = "../secret/keys.csv" }

[sink]
format = "jsonl"
path = "."

[quarantine]
format = "jsonl"
path = "q.jsonl"
"#,
        )
        .unwrap();
        let keys = |outputs| -> Vec<String> {
            outside_paths(&config, &file, outputs, &tenant)
                .into_iter()
                .map(|(key, _)| key)
                .collect()
        };
        let served = Outputs {
            sink: true,
            quarantine: true,
            run_state: false,
        };
        assert_eq!(keys(served), ["source.path", "operators[0].table.path"]);
        // Run state beside a sink at the tenant's root (`.`) lands in its
        // parent: `.acme.weir-checkpoint`, `.acme.weir-state`.
        let run = Outputs {
            run_state: true,
            ..served
        };
        assert_eq!(
            keys(run),
            [
                "source.path",
                "sink.path",
                "pipeline.state_dir",
                "pipeline.state_dir",
                "operators[0].table.path"
            ]
        );
    }
}
