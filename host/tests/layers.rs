//! The host library's layers (ARCHITECTURE.md), checked: a module of a lower layer never
//! names one of a higher layer, whether by a `crate::` path, a `super::` path that climbs to
//! the crate root, or a name the crate root re-exports. Each layer is a folder of `src/`;
//! `lib.rs` is the facade and the binary sits on top, so neither is checked.

use std::fs;
use std::path::{Path, PathBuf};

/// Bottom to top.
const LAYERS: [&str; 5] = ["types", "files", "runtime", "registry", "services"];

fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| *layer == name)
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The names `lib.rs` re-exports, with the layer each comes from (`pub use registry::{Host,
/// ...}` maps `Host` to the registry).
fn root_names() -> Vec<(String, usize)> {
    let lib = fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let mut names = Vec::new();
    for item in lib.split(';') {
        let item = strip_comments(item);
        let Some(rest) = item.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim();
        let head = rest.split("::").next().unwrap_or_default().trim();
        let Some(layer) = layer_of(head) else {
            continue;
        };
        let tail = rest.rsplit("::").next().unwrap_or_default();
        // Either one name, or a `{a, b, c}` group of names (possibly split over lines).
        let group = rest.find('{').map_or(tail, |open| &rest[open..]);
        for name in group
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
        {
            let name = name.rsplit(" as ").next().unwrap_or(name).trim();
            names.push((name.to_owned(), layer));
        }
    }
    names
}

/// The text with `//` comments removed, doc comments (`///`, `//!`) kept: a doc link is a
/// reference too.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("///") || trimmed.starts_with("//!") {
                return line;
            }
            match line.find("// ") {
                Some(at) => &line[..at],
                None => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first segment of each path that starts at `text[at..]`: one name, or the first name
/// of every item of a `{...}` group.
fn first_segments(text: &str, at: usize) -> Vec<String> {
    let rest = &text[at..];
    let rest_trimmed = rest.trim_start();
    if let Some(group) = rest_trimmed.strip_prefix('{') {
        let mut depth = 1;
        let mut end = group.len();
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let body = &group[..end];
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(body[start..i].trim().to_owned());
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(body[start..].trim().to_owned());
        return out
            .into_iter()
            .map(|item| {
                item.chars()
                    .take_while(|c| is_ident(*c))
                    .collect::<String>()
            })
            .filter(|s| !s.is_empty())
            .collect();
    }
    let name: String = rest_trimmed.chars().take_while(|c| is_ident(*c)).collect();
    if name.is_empty() {
        Vec::new()
    } else {
        vec![name]
    }
}

/// The module path of a file below `src/` (`registry/mod.rs` is `[registry]`).
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("below src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// Every upward reference of one file: `(line, what it names, its layer)`.
fn upward(file: &Path, own: usize, roots: &[(String, usize)]) -> Vec<(usize, String, usize)> {
    let text = strip_comments(&fs::read_to_string(file).expect("readable source"));
    let module = module_path(file);
    let resolve = |segment: &str| -> Option<usize> {
        layer_of(segment).or_else(|| {
            roots
                .iter()
                .find(|(name, _)| name == segment)
                .map(|(_, layer)| *layer)
        })
    };
    let mut found = Vec::new();
    let mut push = |at: usize, segments: Vec<String>| {
        for segment in segments {
            if let Some(layer) = resolve(&segment).filter(|layer| *layer > own) {
                let line = text[..at].matches('\n').count() + 1;
                found.push((line, segment, layer));
            }
        }
    };
    for (at, _) in text.match_indices("crate::") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| is_ident(c) || c == '$') {
            continue;
        }
        push(at, first_segments(&text, at + "crate::".len()));
    }
    for (at, _) in text.match_indices("super::") {
        if text[..at].ends_with("super::") || text[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let mut ups = 0;
        let mut end = at;
        while text[end..].starts_with("super::") {
            ups += 1;
            end += "super::".len();
        }
        // `super` from a file's own module; climbing to the root makes the next segment a
        // root name.
        if ups >= module.len() {
            push(at, first_segments(&text, end));
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_layer_names_a_layer_above_it() {
    let roots = root_names();
    assert!(
        roots.iter().any(|(name, _)| name == "Host"),
        "the re-exports of lib.rs were not read: {roots:?}"
    );
    let mut violations = Vec::new();
    let mut checked = 0;
    for (own, layer) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        rust_files(&src().join(layer), &mut files);
        assert!(!files.is_empty(), "layer {layer} has no folder under src/");
        for file in files {
            checked += 1;
            for (line, name, theirs) in upward(&file, own, &roots) {
                violations.push(format!(
                    "{}:{line}: names `{name}` ({}), a layer above {layer}",
                    file.strip_prefix(src()).unwrap_or(&file).display(),
                    LAYERS[theirs]
                ));
            }
        }
    }
    assert!(checked > 30, "only {checked} files checked");
    assert!(
        violations.is_empty(),
        "upward references (see ARCHITECTURE.md):\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_module_of_the_library_is_in_a_layer() {
    let lib = fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    for line in strip_comments(&lib).lines() {
        let line = line.trim();
        let Some(name) = line
            .strip_prefix("mod ")
            .or_else(|| line.strip_prefix("pub mod "))
            .or_else(|| line.strip_prefix("pub(crate) mod "))
        else {
            continue;
        };
        let name = name.trim_end_matches(';').trim();
        assert!(
            layer_of(name).is_some(),
            "lib.rs declares module `{name}`, which is in no layer: put it in one of {LAYERS:?}"
        );
    }
}

#[test]
fn the_check_finds_an_upward_path_a_group_and_a_root_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("probe.rs");
    fs::write(
        &file,
        "use crate::registry::Host;\nuse crate::{files::x, services::y};\n\
         /// See [`crate::Host`].\nfn f() {}\n",
    )
    .expect("write");
    let text = strip_comments(&fs::read_to_string(&file).expect("read"));
    let mut names = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        names.extend(first_segments(&text, at + "crate::".len()));
    }
    assert_eq!(names, ["registry", "files", "services", "Host"]);
}
