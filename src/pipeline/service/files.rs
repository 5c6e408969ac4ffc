//! Resources kept as files in one directory (triggers, schedules): one resource per `*.yaml`,
//! `*.yml` or `*.json` file, read in file-name order with every problem at its line and column.

use std::path::{Path, PathBuf};

use crate::core::diag::Diagnostics;

/// Loads every resource file of `dir` (created if missing) with `load`; `name` says what a
/// resource is called, which no two files may share. `Err` holds the problems of all the files
/// that have any; `Ok` carries each resource with its file, and the warnings.
pub(super) fn load_dir<T>(
    dir: &Path,
    load: impl Fn(&[u8]) -> Result<(T, Diagnostics), Diagnostics>,
    name: impl Fn(&T) -> &str,
) -> Result<(Vec<(PathBuf, T)>, String), String> {
    let at = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(at)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(at)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| {
            let extension = path.extension().and_then(|e| e.to_str());
            matches!(extension, Some("yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    let (mut loaded, mut warnings, mut errors) =
        (Vec::<(PathBuf, T)>::new(), String::new(), String::new());
    for file in files {
        let shown = file.display().to_string();
        let bytes = std::fs::read(&file).map_err(|e| format!("{shown}: {e}"))?;
        match load(&bytes) {
            Ok((resource, found)) => {
                warnings += &found.render(&shown);
                let named = name(&resource);
                if loaded.iter().any(|(_, other)| name(other) == named) {
                    errors += &format!("{shown}: name: another file defines {named:?}\n");
                }
                loaded.push((file, resource));
            }
            Err(found) => errors += &found.render(&shown),
        }
    }
    if errors.is_empty() {
        Ok((loaded, warnings))
    } else {
        Err(errors)
    }
}
