//! docs/architecture.md's module map is the newcomer's way into `src/`:
//! every source file appears in it, and nothing it lists is gone. A file
//! added without a line there (or a line left behind a removed file)
//! fails here, not months later in a reader's hands.

use std::collections::BTreeSet;
use std::path::Path;

/// The files the map lists, as paths under `src/` ("wire/frame.rs"); a
/// directory listed without children ("flight/") stands for all its files.
fn listed(doc: &str) -> BTreeSet<String> {
    let map = doc
        .split("```\nsrc/\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has a module map starting with `src/`");
    let mut dirs: Vec<String> = Vec::new();
    let mut out = BTreeSet::new();
    for line in map.lines() {
        let Some(at) = line.find("── ") else {
            continue;
        };
        // Each level of the tree is four characters of prefix.
        let depth = line[..at].chars().count() / 4;
        let name = line[at + "── ".len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default();
        dirs.truncate(depth);
        let path = format!("{}{name}", dirs.concat());
        if name.ends_with('/') {
            dirs.push(name.to_owned());
        }
        out.insert(path);
    }
    out
}

/// Every `.rs` file and directory under `src/`.
fn present(root: &Path, under: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(root.join(under)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.insert(format!("{under}{name}/"));
            present(root, &format!("{under}{name}/"), out);
        } else if name.ends_with(".rs") {
            out.insert(format!("{under}{name}"));
        }
    }
}

#[test]
fn the_module_map_lists_every_file_in_src_and_nothing_else() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let listed = listed(&doc);
    let mut files = BTreeSet::new();
    present(&root.join("src"), "", &mut files);
    // A directory listed without children covers what is inside it; a
    // directory's `mod.rs` may go unlisted (the directory's line is its).
    let whole = |dir: &String| {
        !listed
            .iter()
            .any(|l| l != dir && l.starts_with(dir.as_str()))
    };
    let covered = |f: &String| {
        listed.contains(f)
            || f.ends_with("/mod.rs")
            || listed
                .iter()
                .any(|l| l.ends_with('/') && f.starts_with(l.as_str()) && f != l && whole(l))
    };
    let missing: Vec<&String> = files.iter().filter(|f| !covered(f)).collect();
    let stale: Vec<&String> = listed.iter().filter(|l| !files.contains(*l)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/architecture.md's module map: not listed {missing:?}; listed but not in src/ {stale:?}"
    );
}
