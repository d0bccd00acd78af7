// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built-in iSCSI initiator (RFC 7143). Protocol code is sans-IO
//! (`pdu`, `text`, `chap`, `login`, `session`): bytes and PDUs in, PDUs and
//! events out, tested without sockets. `conn` is the thin blocking driver
//! over TCP.

pub mod bhs;
pub mod chap;
pub mod client;
pub mod codes;
pub mod conn;
pub mod credentials;
pub mod gather;
pub mod login;
pub mod pdu;
pub mod secret;
pub mod session;
pub mod text;
pub mod url;
