// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<(FileConfig, Vec<ControllerConfig>), Error> {
    FileConfig::parse(Path::new("/etc/vus.toml"), text)
}

fn message(text: &str) -> String {
    match parse(text) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {text}"),
    }
}

const EXAMPLE: &str = r#"
control = "/run/vus/control.sock"
metrics = "127.0.0.1:9321"

[[controller]]
socket = "/run/vus/vm1.sock"
queues = 4

[[controller.lun]]
file = "/srv/vm1.img"
block-size = 4096

[[controller.lun]]
lun = 5
null = "1G"

[[controller.lun]]
iscsi = "iscsi://192.0.2.1/iqn.2026-11.org.example:d/1"
credentials = "/etc/vus/san.chap"
header-digest = true
portal = ["192.0.2.2:3260"]
recovery-timeout = "infinite"

[[controller]]
socket = "/run/vus/vm2.sock"
alua-state = "standby"
"#;

#[test]
fn the_example_parses_like_the_command_line() {
    let (f, c) = parse(EXAMPLE).unwrap();
    assert_eq!(f.metrics.as_deref(), Some("127.0.0.1:9321"));
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].request_queues, 4);
    let luns: Vec<u16> = c[0].luns.keys().copied().collect();
    // Numbered as --lun numbers them: 0, then 5, then the one after.
    assert_eq!(luns, vec![0, 5, 6]);
    assert_eq!(c[0].luns[&0].block_size, 4096);
    assert_eq!(c[0].luns[&5].null_size, Some(1 << 30));
    let il = c[0].luns[&6].iscsi.as_ref().unwrap();
    assert!(il.header_digest && il.recovery_timeout.is_none());
    assert_eq!(il.portals, vec!["192.0.2.2:3260"]);
    assert_eq!(c[1].alua_state, crate::scsi::AluaState::Standby);
}

#[test]
fn syntax_errors_and_unknown_fields_name_the_line() {
    let m = message("[[controller]]\nsocket = \"/s\"\nqueus = 4\n");
    assert!(m.contains("line 3"), "{m}");
    assert!(m.contains("queus"), "{m}");
    let m = message("[[controller]]\nsocket = \"/s\"\nqueues = \"four\"\n");
    assert!(m.contains("line 3"), "{m}");
    let m = message("[[controller]\n");
    assert!(m.contains("line 1"), "{m}");
}

#[test]
fn invalid_values_name_the_object_and_the_field() {
    let m = message("[[controller]]\nsocket = \"/s\"\nqueues = 99\n");
    assert!(
        m.contains("controller 1 (/s)") && m.contains("queues"),
        "{m}"
    );
    let m = message(
        "[[controller]]\nsocket = \"/s\"\n[[controller.lun]]\nlun = 2\nfile = \"/a\"\nblock-size = 1024\n",
    );
    assert!(m.contains("lun 2") && m.contains("block-size"), "{m}");
    let m = message(
        "[[controller]]\nsocket = \"/s\"\n[[controller.lun]]\nfile = \"/a\"\nnull = 4096\n",
    );
    assert!(
        m.contains("lun entry 1") && m.contains("exactly one"),
        "{m}"
    );
    let m = message("[[controller]]\nsocket = \"relative.sock\"\n");
    assert!(m.contains("absolute"), "{m}");
    let m = message("[[controller]]\nsocket = \"/s\"\n[[controller.lun]]\nfile = \"/a,ro\"\n");
    assert!(m.contains("comma"), "{m}");
    let m = message("[[controller]]\nsocket = \"/s\"\n[[controller]]\nsocket = \"/s\"\n");
    assert!(m.contains("controller 2") && m.contains("twice"), "{m}");
    let m = message(
        "[[controller]]\nsocket = \"/s\"\n[[controller.lun]]\nlun = 1\nfile = \"/a\"\n[[controller.lun]]\nlun = 1\nfile = \"/b\"\n",
    );
    assert!(m.contains("lun 1 is given twice"), "{m}");
}

#[test]
fn a_saved_configuration_reads_back_the_same() {
    let (f, c) = parse(EXAMPLE).unwrap();
    let mut out = FileConfig {
        controllers: Vec::new(),
        ..f
    };
    for cc in &c {
        out.controllers
            .push(ControllerSpec::from_config(cc, false).0);
    }
    let text = out.to_toml().unwrap();
    let (_, again) = parse(&text).unwrap();
    // The same, but for the URL's spelling (the port is written out).
    let spelled = |c: &[ControllerConfig]| -> Vec<ControllerConfig> {
        let mut c = c.to_vec();
        for l in c.iter_mut().flat_map(|c| c.luns.values_mut()) {
            if l.iscsi.is_some() {
                l.path = "URL".into();
            }
        }
        c
    };
    assert_eq!(spelled(&again), spelled(&c));
}

#[test]
fn a_password_in_a_url_is_saved_only_when_asked_for() {
    let (_, c) = parse(
        "[[controller]]\nsocket = \"/s\"\n[[controller.lun]]\niscsi = \"iscsi://alice%s3cret@h/iqn.x:y/1\"\n",
    )
    .unwrap();
    let (spec, dropped) = ControllerSpec::from_config(&c[0], false);
    assert_eq!(dropped, vec![0]);
    assert_eq!(
        spec.luns[0].iscsi.as_deref(),
        Some("iscsi://alice@h:3260/iqn.x:y/1")
    );
    let text = FileConfig {
        controllers: vec![spec],
        ..Default::default()
    }
    .to_toml()
    .unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!format!("{:?}", c[0]).contains("s3cret"));
    let (spec, dropped) = ControllerSpec::from_config(&c[0], true);
    assert!(dropped.is_empty());
    assert_eq!(
        spec.luns[0].iscsi.as_deref(),
        Some("iscsi://alice%s3cret@h:3260/iqn.x:y/1")
    );
}

#[test]
fn files_are_written_whole_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "old").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_atomically(&p, "new text").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "new text");
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    assert!(write_atomically(&dir.path().join("no/such/dir/c.toml"), "x").is_err());
}
