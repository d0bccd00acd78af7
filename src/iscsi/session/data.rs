// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A command's write data: bytes of ours, or a `Source` over guest memory
//! sent from where it is (spliced into the send queue, or copied once when
//! short), and its data digest.

use super::*;

/// A command's write data.
pub(super) enum Payload {
    Bytes(Vec<u8>),
    Source(SourceRef),
}

impl Payload {
    pub(super) fn len(&self) -> usize {
        match self {
            Payload::Bytes(v) => v.len(),
            Payload::Source(s) => s.0.size(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Part of a command's write data, to send.
pub(super) enum Chunk<'a> {
    Bytes(&'a [u8]),
    Source(&'a SourceRef, usize, usize),
}

/// Write data from a source shorter than this is copied into the transmit
/// buffer; a longer one is spliced in (sent from the source).
pub const SPLICE_MIN: usize = 64 * 1024;

/// Append `n` bytes of `src` from `at` to `out` as a data segment (with
/// padding and digest); false, appending nothing, if the source cannot
/// give them (the caller then splices them, and sending fails on them).
pub(super) fn copy_segment(
    out: &mut Vec<u8>,
    src: &SourceRef,
    at: usize,
    n: usize,
    dg: Digests,
) -> bool {
    let start = out.len();
    out.resize(start + n, 0);
    if !src.0.read_at(at, &mut out[start..]) {
        out.truncate(start);
        return false;
    }
    out.extend_from_slice(padding(n));
    if dg.data && n > 0 {
        let mut d = RunningDigest::default();
        d.update(&out[start..]);
        out.extend_from_slice(&d.bytes());
    }
    true
}

/// The data digest of `n` bytes of `src` from `at` (and their padding),
/// read in pieces small enough to stay in cache.
pub(super) fn source_digest(src: &SourceRef, at: usize, n: usize) -> [u8; 4] {
    let mut d = RunningDigest::default();
    let mut chunk = [0u8; 16 * 1024];
    let mut done = 0;
    while done < n {
        let k = (n - done).min(chunk.len());
        if !src.0.read_at(at + done, &mut chunk[..k]) {
            // Out of range after all: sending the splice fails too (the
            // connection is then recovered), so this digest never goes out.
            chunk[..k].fill(0);
        }
        d.update(&chunk[..k]);
        done += k;
    }
    d.update(padding(n));
    d.bytes()
}
