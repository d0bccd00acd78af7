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

/// Each module's source, and what `super::` means in it: the scsi module
/// (true) or the module's own parent inside scsi/ (false: pr's files
/// refer to pr that way).
const SOURCES: &[(&str, bool, &str)] = &[
    ("cdb", true, include_str!("../cdb.rs")),
    ("sense", true, include_str!("../sense.rs")),
    ("fnv", true, include_str!("../fnv.rs")),
    ("lun", true, include_str!("../lun.rs")),
    ("limits", true, include_str!("../limits.rs")),
    ("writes", true, include_str!("../writes.rs")),
    ("xcopy::results", false, include_str!("../xcopy/results.rs")),
    ("command", true, include_str!("../command.rs")),
    ("alua", true, include_str!("../alua.rs")),
    ("atomic", true, include_str!("../atomic.rs")),
    ("pr", true, include_str!("../pr/mod.rs")),
    ("pr", false, include_str!("../pr/codec.rs")),
    ("pr", false, include_str!("../pr/persist.rs")),
    (
        "sanitize::state",
        false,
        include_str!("../sanitize/state.rs"),
    ),
    ("lu", true, include_str!("../lu.rs")),
    ("mode", true, include_str!("../mode.rs")),
    ("sbc", true, include_str!("../sbc.rs")),
    ("reservations", true, include_str!("../reservations.rs")),
    ("sanitize", true, include_str!("../sanitize/mod.rs")),
    ("xcopy", true, include_str!("../xcopy/mod.rs")),
    ("spc", true, include_str!("../spc.rs")),
    ("opcodes", true, include_str!("../opcodes.rs")),
    ("execute", true, include_str!("../execute.rs")),
    ("target", true, include_str!("../target.rs")),
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
    for &(module, super_is_scsi, source) in SOURCES {
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

#[test]
fn every_scsi_source_file_is_checked() {
    let mut listed: Vec<&str> = SOURCES.iter().map(|s| s.0).collect();
    listed.dedup();
    // mod.rs only declares and re-exports; tests/ are tests.
    let files = [
        "cdb",
        "sense",
        "fnv",
        "lun",
        "limits",
        "writes",
        "command",
        "alua",
        "atomic",
        "lu",
        "mode",
        "sbc",
        "reservations",
        "spc",
        "opcodes",
        "execute",
        "target",
    ];
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/scsi");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .filter(|n| n != "mod")
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = files.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "a file in src/scsi/ is missing from SOURCES"
    );
    for f in files {
        assert!(listed.contains(&f), "{f} not in SOURCES");
    }
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
