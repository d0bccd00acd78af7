// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! APTPL: the persistent reservation state of a logical unit, kept in a
//! file that survives daemon restarts and host power loss.
//!
//! The file is text, one record a line, closed by a checksum line:
//!
//! ```text
//! vhost-user-scsi persistent reservations v1
//! lu 3123456789abcdef
//! generation 7
//! registration 0000000000abc123 1 0 iqn.2026-11.org.example:vm1
//! reservation 3 1 iqn.2026-11.org.example:vm1
//! checksum 1f2e3d4c5b6a7988
//! ```
//!
//! `lu` is the NAA identifier of the logical unit (a file belonging to another
//! LU is refused); registrations are `key port all_tg_pt initiator`; the
//! reservation is `type port initiator` of its holder. The checksum is the
//! 64-bit FNV-1a of every byte before the checksum line. It is written to a
//! temporary file, fsynced, renamed over the old one, and the directory is
//! fsynced, so a crash leaves the old or the new state, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{ItNexus, PrState, PrType, Registration, Reservation, MAX_REGISTRATIONS};
use crate::scsi::fnv::fnv1a64;

const MAGIC: &str = "vhost-user-scsi persistent reservations v1";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("Cannot read persistent reservation state {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Persistent reservation state {path} is corrupt at line {line}: {why}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
    #[error("Persistent reservation state {path} belongs to logical unit {found:016x}, not {expected:016x}")]
    Foreign {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("Cannot write persistent reservation state {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The file's text for the state of the LU with identifier `naa`.
pub(crate) fn encode(naa: u64, st: &PrState) -> String {
    let mut s = format!("{MAGIC}\nlu {naa:016x}\ngeneration {}\n", st.generation);
    for r in &st.registrations {
        s.push_str(&format!(
            "registration {:016x} {} {} {}\n",
            r.key,
            r.nexus.port,
            u8::from(r.all_tg_pt),
            r.nexus.initiator
        ));
    }
    if let Some(r) = &st.reservation {
        s.push_str(&format!(
            "reservation {} {} {}\n",
            r.ty as u8, r.holder.port, r.holder.initiator
        ));
    }
    let sum = fnv1a64(s.as_bytes());
    s.push_str(&format!("checksum {sum:016x}\n"));
    s
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Write the state (or remove the file when APTPL is off), durably.
pub fn save(path: &Path, naa: u64, st: &PrState) -> Result<(), PersistError> {
    let err = |source| PersistError::Write {
        path: path.into(),
        source,
    };
    if !st.aptpl {
        match fs::remove_file(path) {
            Ok(()) => return sync_dir(path).map_err(err),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(e)),
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(encode(naa, st).as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(e)
    })
}

/// Load the state saved for the LU with identifier `naa`; None if there is
/// no file. A damaged or foreign file is an error, never a silent reset.
pub fn load(path: &Path, naa: u64) -> Result<Option<PrState>, PersistError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.into(),
                source,
            })
        }
    };
    decode(&text, naa, path).map(Some)
}

/// An initiator port name as the state holds them: printable ASCII, as
/// TransportIDs and configured names are.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_graphic())
}

/// The state in a file's `text` (read from `path`, named in errors), for
/// the LU with identifier `naa`. Whatever the text, an error or a state
/// with each I_T nexus registered once, a registered reservation holder,
/// that `encode` writes back as it was read.
pub(crate) fn decode(text: &str, naa: u64, path: &Path) -> Result<PrState, PersistError> {
    let corrupt = |line: usize, why: &'static str| PersistError::Corrupt {
        path: path.into(),
        line,
        why,
    };
    let body_end = text
        .rfind("checksum ")
        .ok_or_else(|| corrupt(text.lines().count(), "no checksum line"))?;
    let (body, sum_line) = text.split_at(body_end);
    let nlines = body.lines().count() + 1;
    if !body.is_empty() && !body.ends_with('\n') {
        return Err(corrupt(nlines, "the checksum does not begin a line"));
    }
    let sum = sum_line
        .trim_end()
        .strip_prefix("checksum ")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| corrupt(nlines, "bad checksum line"))?;
    if sum != fnv1a64(body.as_bytes()) {
        return Err(corrupt(nlines, "checksum mismatch"));
    }
    let mut st = PrState {
        aptpl: true,
        ..PrState::default()
    };
    let mut lines = body.lines().enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, MAGIC)) => {}
        _ => return Err(corrupt(1, "not a persistent reservation state file")),
    }
    let (n, lu) = lines.next().ok_or_else(|| corrupt(2, "missing lu line"))?;
    let found = lu
        .strip_prefix("lu ")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| corrupt(n, "bad lu line"))?;
    if found != naa {
        return Err(PersistError::Foreign {
            path: path.into(),
            found,
            expected: naa,
        });
    }
    for (n, line) in lines {
        let mut f = line.split(' ');
        match f.next() {
            Some("generation") => {
                st.generation = f
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| corrupt(n, "bad generation"))?;
            }
            Some("registration") => {
                let key = f.next().and_then(|v| u64::from_str_radix(v, 16).ok());
                let port = f.next().and_then(|v| v.parse::<u16>().ok());
                let all = f.next().and_then(|v| match v {
                    "0" => Some(false),
                    "1" => Some(true),
                    _ => None,
                });
                let name = f.next().filter(|s| is_name(s));
                match (key, port, all, name, f.next()) {
                    (Some(key), Some(port), Some(all_tg_pt), Some(name), None) => {
                        if st.registrations.len() >= MAX_REGISTRATIONS {
                            return Err(corrupt(n, "too many registrations"));
                        }
                        let nexus = ItNexus::new(name, port);
                        // One registration per I_T nexus (SPC-4 5.13.7).
                        if st.registrations.iter().any(|r| r.nexus == nexus) {
                            return Err(corrupt(n, "a nexus registered twice"));
                        }
                        st.registrations.push(Registration {
                            nexus,
                            key,
                            all_tg_pt,
                        })
                    }
                    _ => return Err(corrupt(n, "bad registration")),
                }
            }
            Some("reservation") => {
                let ty = f
                    .next()
                    .and_then(|v| v.parse::<u8>().ok())
                    .and_then(PrType::from_u8);
                let port = f.next().and_then(|v| v.parse::<u16>().ok());
                let name = f.next().filter(|s| is_name(s));
                match (ty, port, name, f.next()) {
                    (Some(ty), Some(port), Some(name), None) if st.reservation.is_none() => {
                        st.reservation = Some(Reservation {
                            holder: ItNexus::new(name, port),
                            ty,
                        })
                    }
                    _ => return Err(corrupt(n, "bad reservation")),
                }
            }
            _ => return Err(corrupt(n, "unknown record")),
        }
    }
    if let Some(r) = &st.reservation {
        if st.registration(&r.holder).is_none() {
            return Err(corrupt(nlines, "reservation holder is not registered"));
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PrState {
        PrState {
            generation: 7,
            registrations: vec![Registration {
                nexus: ItNexus::new("iqn.2026-11.org.example:vm1", 1),
                key: 0xabc123,
                all_tg_pt: false,
            }],
            reservation: Some(Reservation {
                holder: ItNexus::new("iqn.2026-11.org.example:vm1", 1),
                ty: PrType::ExclusiveAccess,
            }),
            aptpl: true,
            legacy: None,
        }
    }

    #[test]
    fn saved_state_loads_back_identically() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lu.pr");
        save(&p, 0x3000_0000_0000_0001, &sample()).unwrap();
        assert_eq!(load(&p, 0x3000_0000_0000_0001).unwrap(), Some(sample()));
    }

    #[test]
    fn a_nexus_registered_twice_is_corrupt() {
        let mut st = sample();
        st.registrations.push(st.registrations[0].clone());
        let e = decode(&encode(1, &st), 1, Path::new("x.pr")).unwrap_err();
        assert!(e.to_string().contains("registered twice"), "{e}");
        // The same initiator through another port is another nexus.
        st.registrations[1].nexus.port = 2;
        assert_eq!(decode(&encode(1, &st), 1, Path::new("x.pr")).unwrap(), st);
    }

    /// Found by the `aptpl_state` fuzz target: a name ending in a carriage
    /// return on the last record, the checksum line right after it, was
    /// read with the CR, which the file then written did not keep.
    #[test]
    fn a_name_with_a_control_character_or_a_checksum_mid_line_is_corrupt() {
        let body = format!(
            "{MAGIC}\nlu 0000000000000001\ngeneration 7\n\
             registration 0000000000000001 1 0 iqn.2026-m1\r"
        );
        let text = format!("{body}checksum {:016x}\n", fnv1a64(body.as_bytes()));
        let e = decode(&text, 1, Path::new("x.pr")).unwrap_err();
        assert!(e.to_string().contains("does not begin a line"), "{e}");
        let body = body.replace("m1\r", "m\u{1}1\n");
        let text = format!("{body}checksum {:016x}\n", fnv1a64(body.as_bytes()));
        let e = decode(&text, 1, Path::new("x.pr")).unwrap_err();
        assert!(e.to_string().contains("bad registration"), "{e}");
    }

    #[test]
    fn aptpl_off_removes_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lu.pr");
        save(&p, 1, &sample()).unwrap();
        let off = PrState {
            aptpl: false,
            ..sample()
        };
        save(&p, 1, &off).unwrap();
        assert!(!p.exists());
        assert_eq!(load(&p, 1).unwrap(), None);
    }

    #[test]
    fn flipped_byte_is_reported_as_corrupt() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lu.pr");
        save(&p, 1, &sample()).unwrap();
        let t = fs::read_to_string(&p).unwrap().replace("abc123", "abc124");
        fs::write(&p, t).unwrap();
        assert!(matches!(load(&p, 1), Err(PersistError::Corrupt { .. })));
    }

    #[test]
    fn file_of_another_lu_is_foreign() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lu.pr");
        save(&p, 1, &sample()).unwrap();
        assert!(matches!(load(&p, 2), Err(PersistError::Foreign { .. })));
    }

    #[test]
    fn unwritable_directory_is_a_write_error() {
        // The "directory" is a regular file: nothing can be created in it.
        let f = tempfile::NamedTempFile::new().unwrap();
        let p = f.path().join("lu.pr");
        assert!(matches!(
            save(&p, 1, &sample()),
            Err(PersistError::Write { .. })
        ));
    }
}
