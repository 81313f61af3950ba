//! Snapshot assertions for generated artefacts (VICI messages, nft rulesets), test-only.
//! `L2S_BLESS=1` rewrites the snapshot files; review the diff before committing it.

use std::path::Path;

/// Compare `got` with `tests/snapshots/<file>`, or write it there under `L2S_BLESS=1`.
pub fn assert_snapshot(file: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(file);
    if std::env::var_os("L2S_BLESS").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(&path, got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        got, want,
        "snapshot {file} differs (L2S_BLESS=1 regenerates it)"
    );
}
