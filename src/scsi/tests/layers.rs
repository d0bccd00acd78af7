// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! scsi/ depends in one direction: each module names only modules of a
//! lower layer. Read from the sources themselves, so a `use` that points
//! upwards (a state module reaching for a handler, the logical unit for
//! the opcode table) fails here, naming both ends.

use std::collections::BTreeMap;

/// Bottom to top. A module may use the modules of the layers below its
/// own, never its own layer's or those above.
const LAYERS: &[&[&str]] = &[
    // Leaves: wire vocabulary, limits, hashing, LUN addressing.
    &[
        "cdb",
        "sense",
        "fnv",
        "lun",
        "limits",
        "writes",
        "xcopy::results",
    ],
    // The command's vocabulary and the logical unit's state parts.
    &["command", "alua", "atomic", "pr"],
    &["sanitize::state"],
    // The logical unit: state and the methods that change it.
    &["lu"],
    // The commands.
    &["mode", "sbc", "reservations", "sanitize", "xcopy"],
    // SPC's commands, which include the third-party copy VPD page.
    &["spc"],
    // The opcode table: decoding and a handler per entry.
    &["opcodes"],
    // The checks every command passes, then its handler.
    &["execute"],
    // A controller's LUNs.
    &["target"],
];

/// Each module's sources, and what `super::` means in them: the scsi
/// module (true) or the module's own parent inside scsi/ (false: pr's
/// files refer to pr that way).
/// (module, super is scsi, path under src/scsi, the source).
macro_rules! source {
    ($module:literal, $super_is_scsi:literal, $path:literal) => {
        (
            $module,
            $super_is_scsi,
            $path,
            include_str!(concat!("../", $path)),
        )
    };
}

const SOURCES: &[(&str, bool, &str, &str)] = &[
    source!("cdb", true, "cdb.rs"),
    source!("sense", true, "sense.rs"),
    source!("fnv", true, "fnv.rs"),
    source!("lun", true, "lun.rs"),
    source!("limits", true, "limits.rs"),
    source!("writes", true, "writes.rs"),
    source!("xcopy::results", false, "xcopy/results.rs"),
    source!("command", true, "command.rs"),
    source!("alua", true, "alua.rs"),
    source!("atomic", true, "atomic.rs"),
    source!("pr", true, "pr/mod.rs"),
    source!("pr", false, "pr/codec.rs"),
    source!("pr", false, "pr/persist.rs"),
    source!("sanitize::state", false, "sanitize/state.rs"),
    source!("lu", true, "lu.rs"),
    source!("mode", true, "mode.rs"),
    source!("sbc", true, "sbc.rs"),
    source!("reservations", true, "reservations.rs"),
    source!("sanitize", true, "sanitize/mod.rs"),
    source!("xcopy", true, "xcopy/mod.rs"),
    source!("spc", true, "spc.rs"),
    source!("opcodes", true, "opcodes.rs"),
    source!("execute", true, "execute.rs"),
    source!("target", true, "target.rs"),
];

/// The module a name re-exported by scsi/mod.rs comes from.
fn reexports() -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in include_str!("../mod.rs").lines() {
        let Some(rest) = line.strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.trim_end_matches(';').split_once("::") else {
            continue;
        };
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            map.insert(name.trim().to_string(), module.to_string());
        }
    }
    map
}

/// The scsi/ modules a source names: `crate::scsi::m`, and `super::m`
/// where `super` is the scsi module, including `super::{a, b}` groups; a
/// name scsi/mod.rs re-exports counts as its module. Test modules (from
/// `#[cfg(test)]` on) are left out.
fn dependencies(
    source: &str,
    super_is_scsi: bool,
    names: &BTreeMap<String, String>,
) -> Vec<String> {
    let code = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or(source);
    let mut found = Vec::new();
    let mut prefixes = vec!["crate::scsi::"];
    if super_is_scsi {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        for (at, _) in code.match_indices(prefix) {
            // `super::super::` and the like are not scsi's children.
            if code[..at].ends_with("::") {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            let items: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                group.split('}').next().unwrap_or("").split(',').collect()
            } else {
                vec![rest]
            };
            for item in items {
                let path: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut parts = path.split("::").filter(|p| !p.is_empty());
                let Some(first) = parts.next() else { continue };
                let module =
                    if first.starts_with(|c: char| c.is_uppercase()) || first == "target_wlun" {
                        match names.get(first) {
                            Some(m) => m.clone(),
                            None => continue,
                        }
                    } else {
                        match (first, parts.next()) {
                            ("sanitize", Some("state")) => "sanitize::state".to_string(),
                            ("xcopy", Some("results")) => "xcopy::results".to_string(),
                            (m, _) => m.to_string(),
                        }
                    };
                found.push(module);
            }
        }
    }
    found
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn scsi_modules_depend_only_on_lower_layers() {
    let names = reexports();
    let mut wrong = Vec::new();
    for &(module, super_is_scsi, _, source) in SOURCES {
        let own = layer_of(module).unwrap_or_else(|| panic!("{module} has no layer"));
        for dep in dependencies(source, super_is_scsi, &names) {
            if dep == module {
                continue;
            }
            match layer_of(&dep) {
                Some(l) if l < own => {}
                Some(_) => wrong.push(format!("{module} uses {dep}")),
                None => wrong.push(format!("{module} uses {dep}, which has no layer")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward or sideways dependencies: {wrong:?}"
    );
}

/// Every .rs file under src/scsi/ but mod.rs and tests (tests/,
/// tests.rs), recursively.
fn sources_on_disk(dir: &std::path::Path, under: &str, found: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        let path = format!("{under}{name}");
        if e.file_type().unwrap().is_dir() {
            if name != "tests" {
                sources_on_disk(&e.path(), &format!("{path}/"), found);
            }
        } else if name.ends_with(".rs") && path != "mod.rs" && name != "tests.rs" {
            found.push(path);
        }
    }
}

#[test]
fn every_scsi_source_file_is_checked() {
    let mut on_disk = Vec::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/scsi");
    sources_on_disk(std::path::Path::new(dir), "", &mut on_disk);
    on_disk.sort();
    let mut listed: Vec<String> = SOURCES.iter().map(|s| s.2.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "src/scsi/ and SOURCES differ");
}

#[test]
fn an_upward_use_is_caught() {
    let names = reexports();
    let deps = dependencies(
        "use super::opcodes::Ctx;\nuse super::{lu, Outcome};\nfn f() { crate::scsi::sanitize::state::x(); }\n",
        true,
        &names,
    );
    assert_eq!(deps, ["sanitize::state", "opcodes", "lu", "command"]);
}
