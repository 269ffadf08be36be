//! Runs every committed corpus file and regression input through its target, on stable, so CI
//! notices when a change makes a target panic on an input it once handled, or when a target
//! loses its corpus (docs/fuzzing.md, docs/decisions/0010-fuzzing.md).
//!
//! Layout, relative to the repository root:
//! - `fuzz/corpus/<target>/`: the minimized corpus (`cargo fuzz cmin`); required for every target;
//! - `fuzz/artifacts/<target>/`: inputs that once crashed the target (fixed since); optional.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use dps_fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted; `None` when it does not exist.
fn files(dir: &Path) -> Option<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Some(files)
}

/// The names of the subdirectories (or files) of `dir`.
fn names(dir: &Path, ext: Option<&str>) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let p = e.ok()?.path();
                    match ext {
                        Some(ext) if p.extension()? != ext => None,
                        Some(_) => Some(p.file_stem()?.to_string_lossy().into_owned()),
                        None => p
                            .is_dir()
                            .then(|| p.file_name().map(|n| n.to_string_lossy().into_owned()))?,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_target_has_a_wrapper_and_a_corpus_and_nothing_else_does() {
    let targets: BTreeSet<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(TARGETS.len(), targets.len(), "target names are unique");
    let dir = fuzz_dir();
    assert_eq!(
        names(&dir.join("fuzz_targets"), Some("rs")),
        targets,
        "fuzz/fuzz_targets/*.rs and dps_fuzz::TARGETS must list the same targets"
    );
    for name in &targets {
        let corpus = files(&dir.join("corpus").join(name))
            .unwrap_or_else(|| panic!("target '{name}' has no corpus directory fuzz/corpus/{name}/"));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ is empty");
    }
    for kind in ["corpus", "artifacts"] {
        let stale: Vec<String> = names(&dir.join(kind), None).difference(&targets).cloned().collect();
        assert!(stale.is_empty(), "fuzz/{kind}/ has directories of no target: {stale:?}");
    }
}

#[test]
fn every_corpus_and_artifact_input_runs_clean() {
    let dir = fuzz_dir();
    // One thread per target: the whole replay stays within a few seconds.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = TARGETS
            .iter()
            .map(|&(name, target)| {
                let dir = &dir;
                s.spawn(move || {
                    let mut failures = Vec::new();
                    let inputs = ["corpus", "artifacts"]
                        .iter()
                        .flat_map(|kind| files(&dir.join(kind).join(name)).unwrap_or_default());
                    for path in inputs {
                        let data = std::fs::read(&path).expect("readable input");
                        if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                            failures.push(format!("{name}: {}", path.display()));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("the replay thread itself does not panic"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "inputs that make their target panic:\n{}",
        failures.join("\n")
    );
}
