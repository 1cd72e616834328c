//! The core crate's layers look only down: the CPUID readers and the rules (components, cpuid,
//! layout, image, validate, …) never depend on the code that executes instructions (`hw`), and
//! the engine reaches the hardware only through the model's `Backend` trait. This test reads
//! every source file of `src/` and checks each `crate::<module>` reference against the order
//! below, so a new upward edge (a cycle such as cpuid → hw → validate → image → layout → cpuid)
//! fails here with the file and line that makes it.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module with its layer: a module may use modules of lower layers only.
const LAYERS: &[(&str, u32)] = &[
    ("components", 0),
    ("cpuid", 1),
    ("layout", 2),
    ("image", 3),
    ("snapshot", 3),
    ("guest_cpuid", 3),
    ("strategy", 3),
    ("diff", 4),
    ("validate", 4),
    ("compat", 4),
    ("convert", 5),
    ("model", 5),
    ("vmm", 5),
    ("filekind", 6),
    ("hw", 6),
    ("engine", 7),
];

fn layer(m: &str) -> Option<u32> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|&(_, l)| l)
}

fn visit(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            visit(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_depend_only_on_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    files.sort();
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut violations = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "testutil" {
            continue;
        }
        let Some(own) = layer(&top) else {
            violations.push(format!(
                "{}: module `{top}` has no layer in LAYERS",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue; // documentation may point anywhere
            }
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + 7..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name == top || name == "testutil" || name.is_empty() {
                    continue;
                }
                match layer(&name) {
                    Some(l) if l < own => {
                        edges
                            .entry((top.clone(), name.clone()))
                            .or_insert_with(|| format!("{}:{}", rel.display(), n + 1));
                    }
                    Some(l) => violations.push(format!(
                        "{}:{}: `{top}` (layer {own}) uses `{name}` (layer {l}): {}",
                        rel.display(),
                        n + 1,
                        code
                    )),
                    None => violations.push(format!(
                        "{}:{}: `{name}` has no layer in LAYERS",
                        rel.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "upward edges:\n{}",
        violations.join("\n")
    );
    // The edges the layering is about exist only downward; the list is printed for review.
    for ((a, b), at) in &edges {
        println!("{a} -> {b}  (first at {at})");
    }
    assert!(!edges.contains_key(&("cpuid".into(), "hw".into())));
    assert!(edges.contains_key(&("hw".into(), "cpuid".into())));
}
