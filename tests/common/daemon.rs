// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A daemon a test started, killed when the test ends however it ends.

use std::path::PathBuf;
use std::process::Child;

pub struct Daemon {
    pub child: Child,
    /// The test's directory (sockets, disks, the daemon's log).
    pub dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
