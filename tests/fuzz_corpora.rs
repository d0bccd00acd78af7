// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fuzz targets' committed corpora, replayed on any toolchain: every
//! file under fuzz/corpus/NAME goes through `fuzzing::NAME`, the function
//! the coverage-guided fuzzer (nightly, fuzz/) calls. A crash found by
//! fuzzing is fixed, gets a unit test of its own, and its input joins the
//! corpus.

use std::path::{Path, PathBuf};

use vhost_user_scsi::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of a directory, sorted (empty if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_corpus_file_replays_through_its_target() {
    for (name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seeds");
        for f in corpus {
            // Printed only if the target panics on this file.
            println!("{name}: {}", f.display());
            target(&std::fs::read(&f).unwrap());
        }
    }
}

#[test]
fn every_fuzz_target_file_is_a_listed_target() {
    let mut on_disk: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}
