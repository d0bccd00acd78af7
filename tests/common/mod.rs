// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Helpers shared by the integration tests (each test crate uses some).
#![allow(dead_code)]

pub mod daemon;
pub mod kernel;
pub mod tgt;
