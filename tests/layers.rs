//! The dependency rule of the crate's layout: lib.rs lists the modules bottom up, and a
//! module may use only modules listed before it (or itself). Read from the source, so a
//! `use crate::engine` added to `storage/` fails here, naming the file.

use std::{collections::HashMap, fs, path::Path};

/// Module names in the order lib.rs's "# Layout" section first mentions them.
fn layout() -> Vec<String> {
    let lib = fs::read_to_string("src/lib.rs").unwrap();
    let start = lib.find("# Layout").expect("lib.rs has a # Layout section");
    let end = lib[start..]
        .find("pub mod")
        .map_or(lib.len(), |e| start + e);
    let mut order: Vec<String> = Vec::new();
    let mut rest = &lib[start..end];
    while let Some(i) = rest.find("[`") {
        rest = &rest[i + 2..];
        let Some(j) = rest.find("`]") else { break };
        let name = &rest[..j];
        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !order.iter().any(|o| o == name)
        {
            order.push(name.to_owned());
        }
        rest = &rest[j..];
    }
    order
}

/// The top-level modules a source text names through `crate::` (paths and `use` groups).
fn crate_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's top-level items: split at commas outside nested braces.
            let (mut depth, mut item, mut end) = (0usize, String::new(), group.len());
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = k;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.push(item);
            rest = &group[end..];
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out.into_iter()
        .map(|item| {
            item.trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_uses_one_listed_above_it() {
    let order = layout();
    assert!(
        order.len() >= 10,
        "lib.rs's layout lists too few modules: {order:?}"
    );
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut violations = Vec::new();
    for (module, &own) in &rank {
        let mut files = Vec::new();
        let single = Path::new("src").join(format!("{module}.rs"));
        if single.exists() {
            files.push(single);
        }
        let dir = Path::new("src").join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        assert!(
            !files.is_empty(),
            "lib.rs lists {module}, which has no source"
        );
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            // Unit tests may reach anywhere.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for used in crate_modules(code) {
                match rank.get(used.as_str()) {
                    Some(&r) if r > own => violations.push(format!(
                        "{} uses crate::{used}, listed above {module}",
                        file.display()
                    )),
                    Some(_) => {}
                    None => violations.push(format!(
                        "{} uses crate::{used}, which lib.rs's layout does not list",
                        file.display()
                    )),
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_reader_sees_groups_and_paths() {
    let text =
        "use crate::{config::{A, B}, error::Error, metrics};\nlet x = crate::domain::now_ms();";
    let mut got = crate_modules(text);
    got.sort();
    assert_eq!(got, ["config", "domain", "error", "metrics"]);
}
