// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vhost-user-scsi: a vhost-user-scsi backend daemon with SCSI emulation of
//! local backstores. See docs/architecture.md for the layers.

pub mod backstore;
pub mod bench;
pub mod claim;
pub mod config;
pub mod config_file;
pub mod control;
pub mod device;
#[doc(hidden)]
pub mod fuzzing;
pub mod iscsi;
pub mod prhelper;
pub mod privileges;
pub mod ratelimit;
pub mod registry;
pub mod remote;
pub mod sandbox;
pub mod scsi;
pub mod seccomp;
pub mod seqhash;
pub mod server;
pub mod stats;
pub mod vhost;
pub mod virtio;

/// An error and its sources, joined with ": " (for one-line reports).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
