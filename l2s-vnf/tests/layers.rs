//! The crate's layers only point down. Every `crate::` path in `src/` is mapped to the layer
//! of the top-level module it names; a module may use its own layer's code only when it is
//! itself, and otherwise only lower layers. The backends (layer 3) never use each other.
//!
//! Run alone: `cargo test -p l2s-vnf --test layers`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. Modules on one line share a layer and may not use each other.
const LAYERS: &[&[&str]] = &[
    // The shared vocabulary: names and marks, kinds, the clock, the MTU arithmetic.
    &["base"],
    // Libraries on it: X.509 files, and the kernel's IPsec policy database (both the IPsec
    // backend and the guard's block policies use it, and backends never use each other).
    &["pki", "xfrm"],
    &["config"],
    // One folder per backend.
    &["linux", "ovs", "ipsec", "guard", "evpn"],
    // The desired state, assembled from every backend's part.
    &["model"],
    // The plan: observed state of all backends, and their diffs composed.
    &["plan"],
    &["apply"],
    &["status"],
    &["daemon"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`None`: the crate root files).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The top-level modules a source text names through `crate::` (comments left out).
fn used_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            // `l2s_vnf_crate::` or `foocrate::` are not `crate::`.
            let before = &rest[..at];
            rest = &rest[at + "crate::".len()..];
            if before
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
            {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let head: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !head.is_empty() {
                        out.insert(head);
                    }
                }
                continue;
            }
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !head.is_empty() {
                out.insert(head);
            }
        }
    }
    out
}

/// Every edge that points up or sideways, as `file: from -> to (why)`.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut out = vec![];
    for (rel, text) in files {
        let Some(from) = module_of(rel) else {
            continue;
        };
        let Some(from_layer) = layer_of(&from) else {
            out.push(format!(
                "{}: module `{from}` has no layer (add it to LAYERS)",
                rel.display()
            ));
            continue;
        };
        for to in used_modules(text) {
            if to == from {
                continue;
            }
            match layer_of(&to) {
                None => out.push(format!(
                    "{}: {from} -> {to} (no such layer; add it to LAYERS)",
                    rel.display()
                )),
                Some(l) if l == from_layer => out.push(format!(
                    "{}: {from} -> {to} (sideways: same layer)",
                    rel.display()
                )),
                Some(l) if l > from_layer => out.push(format!(
                    "{}: {from} -> {to} (upward: layer {from_layer} uses layer {l})",
                    rel.display()
                )),
                Some(_) => {}
            }
        }
    }
    out
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            out.push((rel, text));
        }
    }
}

fn crate_sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    sources(&root, &root, &mut files);
    files
}

#[test]
fn every_crate_path_points_down_a_layer() {
    let files = crate_sources();
    assert!(files.len() > 40, "found only {} source files", files.len());
    let v = violations(&files);
    assert!(v.is_empty(), "layering broken:\n  {}", v.join("\n  "));
}

#[test]
fn every_top_level_module_has_a_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap_or_default();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(declared.len() >= 10, "{declared:?}");
    for m in declared {
        assert!(layer_of(m).is_some(), "`{m}` is in lib.rs but in no layer");
    }
}

/// The negative control: one planted edge of each kind is found, in the real tree.
#[test]
fn a_planted_upward_or_sideways_edge_is_found() {
    let mut files = crate_sources();
    let storm = files
        .iter_mut()
        .find(|(p, _)| p == Path::new("ovs/storm.rs"))
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("ovs/storm.rs not found"));
    storm.push_str("\nuse crate::plan::Change;\n");
    let v = violations(&files);
    assert_eq!(
        v,
        vec!["ovs/storm.rs: ovs -> plan (upward: layer 3 uses layer 5)".to_string()]
    );

    let mut files = crate_sources();
    let guard = files
        .iter_mut()
        .find(|(p, _)| p == Path::new("guard/mod.rs"))
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("guard/mod.rs not found"));
    guard.push_str("\nfn f() { let _ = crate::{linux::REMOVAL_GROUP, base::names::EXT_OWNER}; }\n");
    assert_eq!(
        violations(&files),
        vec!["guard/mod.rs: guard -> linux (sideways: same layer)".to_string()]
    );

    // A doc comment naming a higher module is not an edge.
    let files = vec![(
        PathBuf::from("base/names.rs"),
        "//! see [`crate::plan`]\nconst X: u8 = 1; // crate::daemon\n".to_string(),
    )];
    assert!(violations(&files).is_empty());
}
