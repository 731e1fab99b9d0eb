//! Tenant confinement: whether a path is inside a tenant's directory, with
//! `.`/`..` resolved and symbolic links followed.

use std::path::{Component, Path, PathBuf};

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
}
