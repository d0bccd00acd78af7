// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Persistent reservations on a device-mapper multipath map, without
//! libmpathpersist or multipathd: the map and its paths are found in sysfs
//! (`/sys/dev/block/MAJ:MIN/dm/uuid` starting with `mpath-`, and its
//! `slaves/`), and each command goes to the paths itself:
//!
//! * REGISTER and REGISTER AND IGNORE EXISTING KEY go to every path (each path
//!   is its own I_T nexus and needs its own registration). A path that answers
//!   RESERVATION CONFLICT to REGISTER while another path accepted it is not
//!   registered yet (added later, or lost its registration): it gets REGISTER
//!   AND IGNORE EXISTING KEY with the same key.
//! * Every other PR OUT, and every PR IN, goes to one path; a path that fails
//!   at the transport level is skipped and the next one tried.
//! * REGISTER AND MOVE is refused (INVALID FIELD IN CDB), as libmpathpersist
//!   refuses it: moving a reservation between nexuses of one map has no
//!   meaning for its user.
//!
//! Unit attentions from a path are retried on that path.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use super::codec::{Reply, PERSISTENT_RESERVE_OUT};
use super::sgio::{self, check_condition, is_transport_failure};
use crate::privileges;
use crate::scsi::pr::ProutAction;
use crate::scsi::sense::Sense;

/// How many times a path's unit attention is retried.
const UA_RETRIES: usize = 4;

/// The path devices (kernel names such as `sdb`) of multipath map MAJ:MIN,
/// or None if the block device is not a multipath map.
pub fn paths_of(sysfs: &Path, major: u32, minor: u32) -> Option<Vec<String>> {
    let dev = sysfs.join(format!("dev/block/{major}:{minor}"));
    let uuid = fs::read_to_string(dev.join("dm/uuid")).ok()?;
    if !uuid.trim_start().starts_with("mpath-") {
        return None;
    }
    let mut names: Vec<String> = fs::read_dir(dev.join("slaves"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Some(names)
}

fn open_path(name: &str, write: bool) -> io::Result<File> {
    // Opening a path device is the one place that needs to bypass file
    // permissions when the helper runs as an unprivileged user.
    privileges::with_dac_override(|| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(Path::new("/dev").join(name))
    })
}

fn is_unit_attention(r: &Reply) -> bool {
    r.status == 0x02 && crate::scsi::sense::is_unit_attention(&r.sense)
}

/// Run on one path, retrying unit attentions.
fn on_path(name: &str, cdb: &[u8; 16], out: &[u8], in_len: usize) -> Reply {
    let f = match open_path(name, !out.is_empty() || cdb[0] == 0x5f) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("multipath: cannot open path /dev/{name}: {e}");
            return check_condition(&sgio::COMM_FAILURE);
        }
    };
    let mut r = sgio::execute(f.as_fd(), cdb, out, in_len);
    for _ in 0..UA_RETRIES {
        if !is_unit_attention(&r) {
            break;
        }
        r = sgio::execute(f.as_fd(), cdb, out, in_len);
    }
    r
}

/// Execute a PR command on a multipath map with paths `paths`.
pub fn execute(paths: &[String], cdb: &[u8; 16], out: &[u8], in_len: usize) -> Reply {
    if paths.is_empty() {
        log::warn!("multipath: map has no paths");
        return on_path("", cdb, out, in_len);
    }
    if cdb[0] == PERSISTENT_RESERVE_OUT {
        match ProutAction::try_from(cdb[1] & 0x1f) {
            Ok(ProutAction::RegisterAndMove) => {
                return check_condition(&Sense::invalid_cdb_field(1, Some(4)));
            }
            Ok(sa) if sa.registers() => return register_everywhere(paths, sa, cdb, out),
            _ => {}
        }
    }
    let mut last = None;
    for p in paths {
        let r = on_path(p, cdb, out, in_len);
        if !is_transport_failure(&r) {
            return r;
        }
        log::warn!("multipath: path {p} failed, trying the next one");
        last = Some(r);
    }
    last.unwrap_or_else(|| on_path("", cdb, out, in_len))
}

/// Run REGISTER or REGISTER AND IGNORE EXISTING KEY (`sa`) on every path.
fn register_everywhere(paths: &[String], sa: ProutAction, cdb: &[u8; 16], out: &[u8]) -> Reply {
    let results: Vec<(usize, Reply)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (i, on_path(p, cdb, out, 0)))
        .collect();
    let any_good = results.iter().any(|(_, r)| r.status == 0);
    let mut first_good = None;
    let mut failure = None;
    for (i, r) in results {
        match r.status {
            0 => {
                first_good.get_or_insert(r);
            }
            // Not registered on this path yet: register it regardless of key.
            0x18 if any_good && sa == ProutAction::Register => {
                let mut ignore = *cdb;
                ignore[1] = (ignore[1] & !0x1f) | ProutAction::RegisterAndIgnoreExistingKey as u8;
                let r2 = on_path(&paths[i], &ignore, out, 0);
                if r2.status != 0 && !is_transport_failure(&r2) {
                    failure.get_or_insert(r2);
                }
            }
            _ if is_transport_failure(&r) => {
                log::warn!(
                    "multipath: REGISTER on path {} failed at the transport",
                    paths[i]
                );
            }
            _ => {
                failure.get_or_insert(r);
            }
        }
    }
    match (failure, first_good) {
        (Some(f), _) => f,
        (None, Some(g)) => g,
        // Every path failed at the transport level.
        (None, None) => check_condition(&sgio::COMM_FAILURE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(uuid: &str, slaves: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("dev/block/254:3");
        fs::create_dir_all(dev.join("dm")).unwrap();
        fs::create_dir_all(dev.join("slaves")).unwrap();
        fs::write(dev.join("dm/uuid"), uuid).unwrap();
        for s in slaves {
            fs::create_dir_all(dev.join("slaves").join(s)).unwrap();
        }
        d
    }

    #[test]
    fn multipath_map_lists_its_paths_in_order() {
        let d = fake_sysfs("mpath-36001405abcdef\n", &["sdc", "sdb"]);
        assert_eq!(
            paths_of(d.path(), 254, 3),
            Some(vec!["sdb".to_string(), "sdc".to_string()])
        );
    }

    #[test]
    fn other_device_mapper_targets_are_not_multipath() {
        let d = fake_sysfs("LVM-abcdef", &["sdb"]);
        assert_eq!(paths_of(d.path(), 254, 3), None);
        assert_eq!(paths_of(d.path(), 8, 0), None);
    }

    #[test]
    fn register_and_move_is_refused() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5f;
        cdb[1] = 0x07;
        let r = execute(&["sdz".into()], &cdb, &[0; 24], 0);
        assert_eq!((r.status, r.sense[2], r.sense[12]), (0x02, 0x05, 0x24));
    }
}
