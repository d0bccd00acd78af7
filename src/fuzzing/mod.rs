// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The bodies of the fuzz targets (`fuzz/fuzz_targets/NAME.rs` calls
//! `fuzzing::NAME`), one per input the daemon takes from outside: kept in
//! the library so that `tests/fuzz_corpora.rs` replays every committed
//! corpus file through the same code on the stable toolchain. Each target
//! takes any bytes; a panic (an `assert!` of an invariant included) is a
//! finding. See docs/fuzzing.md.

mod cli;
mod control;
mod iscsi;
mod scsi;
mod virtio;

pub use cli::{config_specs, iscsi_credentials, iscsi_url};
pub use control::{config_file, control_rpc};
pub use iscsi::{iscsi_login, iscsi_pdu, iscsi_reader, iscsi_session, iscsi_text};
pub use scsi::{aptpl_state, pr_out_params, prhelper_codec, scsi_execute, sgio_reply};
pub use virtio::{virtio_control, virtio_request};

/// A fuzz target: takes any bytes, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its directory under fuzz/corpus/.
pub const TARGETS: &[(&str, Target)] = &[
    ("aptpl_state", aptpl_state),
    ("config_file", config_file),
    ("config_specs", config_specs),
    ("control_rpc", control_rpc),
    ("iscsi_credentials", iscsi_credentials),
    ("iscsi_login", iscsi_login),
    ("iscsi_pdu", iscsi_pdu),
    ("iscsi_reader", iscsi_reader),
    ("iscsi_session", iscsi_session),
    ("iscsi_text", iscsi_text),
    ("iscsi_url", iscsi_url),
    ("pr_out_params", pr_out_params),
    ("prhelper_codec", prhelper_codec),
    ("scsi_execute", scsi_execute),
    ("sgio_reply", sgio_reply),
    ("virtio_request", virtio_request),
    ("virtio_control", virtio_control),
];

/// Bytes as text, the way a command line or file would hand them over
/// (invalid UTF-8 replaced).
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}
