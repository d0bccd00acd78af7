// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::iscsi::pdu::{Opcode, PduError};
use crate::iscsi::session::Sink;

/// A sink in memory that receives from the socket like guest memory,
/// and counts the bytes copied into it (not received into it).
struct MemSink(std::sync::Mutex<Vec<u8>>, AtomicUsize);

fn mem_sink(len: usize) -> Arc<MemSink> {
    Arc::new(MemSink(
        std::sync::Mutex::new(vec![0; len]),
        AtomicUsize::new(0),
    ))
}

impl Sink for MemSink {
    fn size(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn write_at(&self, offset: usize, data: &[u8]) -> bool {
        self.0.lock().unwrap()[offset..offset + data.len()].copy_from_slice(data);
        self.1.fetch_add(data.len(), Ordering::SeqCst);
        true
    }
    fn read_from(
        &self,
        fd: i32,
        offset: usize,
        len: usize,
        after: &mut [u8],
    ) -> Option<io::Result<usize>> {
        let mut b = self.0.lock().unwrap();
        Some(read_two(fd, &mut b[offset..offset + len], after))
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
        buf.copy_from_slice(&self.0.lock().unwrap()[offset..offset + buf.len()]);
        true
    }
}

/// A reader on one end of a loopback connection, and the other end.
fn pair(digests: Digests) -> (Reader, std::net::TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let far = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (near, _) = l.accept().unwrap();
    near.set_nonblocking(true).unwrap();
    (Reader::new(near, digests, 1 << 20, Vec::new()), far)
}

#[test]
fn a_writers_progress_stops_while_the_target_reads_nothing() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let near = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut far, _) = l.accept().unwrap();
    near.set_nonblocking(true).unwrap();
    let mut w = Writer {
        stream: near,
        session: Session::new(crate::iscsi::session::tests::negotiated(true, true, 10)),
        digests: Digests::default(),
        tx: Gather::default(),
        broken: None,
        progress: 0,
    };
    assert!(w.flush());
    assert_eq!(w.progress(), 0);
    // More than the socket buffers hold, and a peer that reads none:
    // the count stops. (The kernel may take a little more for a while,
    // as it grows its buffers: a bounded number of flushes, no clock.)
    w.tx.bytes().resize(64 << 20, 0);
    let mut last = u64::MAX;
    let mut tries = 0;
    while w.progress() != last {
        last = w.progress();
        assert!(!w.flush());
        tries += 1;
        assert!(tries < 10_000, "the socket never filled");
    }
    assert!(w.pending());
    let stopped = w.progress();
    assert!(stopped > 0);
    // The peer reads some: the count moves again. (A window update
    // needs a good part of the peer's buffer read.)
    let mut buf = vec![0; 64 << 10];
    let mut taken = 0;
    while w.progress() == stopped {
        far.read_exact(&mut buf).unwrap();
        taken += buf.len();
        assert!(taken < 64 << 20, "no progress seen");
        assert!(!w.flush());
    }
    // The peer reads everything: nothing waits.
    let reader = std::thread::spawn(move || {
        let mut n = 0;
        while let Ok(k) = far.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    });
    let fd = w.stream.as_raw_fd();
    while !w.flush() {
        super::super::thread::wait_fd(fd, libc::POLLOUT, std::time::Duration::from_secs(1));
    }
    assert!(!w.pending());
    drop(w);
    assert_eq!(reader.join().unwrap() + taken, 64 << 20);
}

const HEADER_DIGEST: Digests = Digests {
    header: true,
    data: false,
};

fn data_in(len: usize) -> Vec<u8> {
    data_in_with(len, HEADER_DIGEST)
}

fn data_in_with(len: usize, dg: Digests) -> Vec<u8> {
    let mut p = Pdu::new(Opcode::DataIn);
    p.set_itt(7);
    p.set_u32(40, 16);
    p.data = (0..len).map(|i| (i * 13) as u8).collect();
    p.encode(dg).unwrap()
}

/// Send `wire` in `piece`-byte writes to a reader placing into a
/// 300 000-byte sink at 16 (for task 7 only); the reader's outcome,
/// the sink, and how often placement was asked.
fn place_in_pieces(dg: Digests, wire: &[u8], piece: usize) -> (Result<Pdu, Error>, Vec<u8>, usize) {
    let (mut r, mut far) = pair(dg);
    let sink = mem_sink(300_000);
    let k = SinkRef(sink.clone());
    let mut asked = 0;
    let mut place = |bhs: &[u8]| {
        asked += 1;
        (u32::from_be_bytes([bhs[16], bhs[17], bhs[18], bhs[19]]) == 7).then(|| (k.clone(), 16))
    };
    let mut out = Vec::new();
    let mut res = Ok(0);
    for part in wire.chunks(piece) {
        far.write_all(part).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        res = r.read(&mut out, &mut place);
        if res.is_err() {
            break;
        }
    }
    let res = res
        .and_then(|_| read_until(&mut r, &mut out, &mut place))
        .map(|()| out.remove(0));
    let b = sink.0.lock().unwrap().clone();
    (res, b, asked)
}

#[test]
fn a_placed_data_in_is_checked_against_its_data_digest() {
    let dg = Digests {
        header: true,
        data: true,
    };
    let want: Vec<u8> = (0..200_001).map(|i| (i * 13) as u8).collect();
    // Pieces that end inside the data, inside the padding and inside
    // the digest; one piece (all from the receive buffer).
    for piece in [70_000, 200_054, 200_058, 1 << 20] {
        let wire = data_in_with(200_001, dg);
        let (r, b, _) = place_in_pieces(dg, &wire, piece);
        let p = r.unwrap_or_else(|e| panic!("pieces of {piece}: {e}"));
        assert!(p.data.is_empty());
        assert!(b[16..16 + 200_001] == want[..], "pieces of {piece}");
        // A damaged data byte (early or late) or digest byte is caught.
        for at in [48 + 4 + 10, 48 + 4 + 199_990, wire.len() - 2] {
            let mut bad = wire.clone();
            bad[at] ^= 0x80;
            let (r, _, _) = place_in_pieces(dg, &bad, piece);
            assert!(
                matches!(r, Err(Error::Pdu(PduError::DataDigest))),
                "pieces of {piece}, byte {at}: {r:?}"
            );
        }
    }
}

/// Read until `out` has a PDU or an error comes (at most 2 s).
fn read_until(r: &mut Reader, out: &mut Vec<Pdu>, place: Place) -> Result<(), Error> {
    for _ in 0..200 {
        r.read(out, place)?;
        if !out.is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no PDU");
}

#[test]
fn a_big_data_in_arriving_in_pieces_lands_in_its_sink() {
    let (r, b, asked) = place_in_pieces(HEADER_DIGEST, &data_in(200_001), 70_000);
    let p = r.unwrap();
    assert_eq!(asked, 1);
    assert!(p.data.is_empty());
    assert_eq!(p.data_segment_length(), 200_001);
    let want: Vec<u8> = (0..200_001).map(|i| (i * 13) as u8).collect();
    assert!(b[16..16 + 200_001] == want[..]);
    assert!(b[..16].iter().all(|&x| x == 0));
}

#[test]
fn after_a_placed_segment_the_next_ones_are_received_into_their_sink_too() {
    const LEN: usize = 100_001;
    for (header, data) in [(false, false), (true, false), (true, true)] {
        let dg = Digests { header, data };
        let (mut r, mut far) = pair(dg);
        let sink = mem_sink(16 + 3 * LEN);
        let k = SinkRef(sink.clone());
        let mut place = |bhs: &[u8]| {
            let at = u32::from_be_bytes([bhs[40], bhs[41], bhs[42], bhs[43]]);
            Some((k.clone(), at as usize))
        };
        // Three segments (padded: 100 001 is not a multiple of 4) at
        // 16, 16 + LEN and 16 + 2 LEN; the first arrives in pieces,
        // the other two back to back once it is in.
        let segment = |i: usize| {
            let mut p = Pdu::new(Opcode::DataIn);
            p.set_itt(7);
            p.set_u32(40, (16 + i * LEN) as u32);
            p.data = (0..LEN).map(|j| (i * 7 + j * 13) as u8).collect();
            p.encode(dg).unwrap()
        };
        let first = segment(0);
        let mut out = Vec::new();
        for part in first.chunks(70_000) {
            far.write_all(part).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            r.read(&mut out, &mut place).unwrap();
        }
        let mut rest = segment(1);
        rest.extend(segment(2));
        far.write_all(&rest).unwrap();
        for _ in 0..200 {
            r.read(&mut out, &mut place).unwrap();
            if out.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(out.len(), 3, "{dg:?}");
        assert!(out.iter().all(|p| p.data.is_empty()));
        let b = sink.0.lock().unwrap();
        for i in 0..3 {
            let want: Vec<u8> = (0..LEN).map(|j| (i * 7 + j * 13) as u8).collect();
            assert!(
                b[16 + i * LEN..16 + (i + 1) * LEN] == want[..],
                "{dg:?} {i}"
            );
        }
        // Only what the first read took past the header was copied
        // (from the receive buffer).
        let header_len = 48 + if header { 4 } else { 0 };
        assert_eq!(sink.1.load(Ordering::SeqCst), 70_000 - header_len, "{dg:?}");
    }
}

#[test]
fn small_data_ins_go_from_the_receive_buffer_into_their_sink() {
    for data in [false, true] {
        let dg = Digests { header: true, data };
        let (mut r, mut far) = pair(dg);
        let sink = mem_sink(8192);
        let k = SinkRef(sink.clone());
        let mut asked = 0;
        let mut place = |_: &[u8]| {
            asked += 1;
            Some((k.clone(), 16))
        };
        // Two small Data-Ins and a NOP-In (not a Data-In: its data
        // stays in the PDU) in one read.
        let mut wire = data_in_with(4001, dg);
        wire.extend(data_in_with(3, dg));
        let mut nop = Pdu::new(Opcode::NopIn);
        nop.data = vec![9; 10];
        wire.extend(nop.encode(dg).unwrap());
        far.write_all(&wire).unwrap();
        let mut out = Vec::new();
        for _ in 0..200 {
            r.read(&mut out, &mut place).unwrap();
            if out.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(asked, 2, "digest {data}");
        assert!(out[0].data.is_empty() && out[1].data.is_empty());
        assert_eq!(out[0].data_segment_length(), 4001);
        assert_eq!(out[2].data, vec![9; 10]);
        let b = sink.0.lock().unwrap();
        let first: Vec<u8> = (0..4001).map(|i| (i * 13) as u8).collect();
        // The second Data-In (also at 16) overwrote the first 3 bytes.
        assert!(b[16 + 3..16 + 4001] == first[3..]);
        assert_eq!(b[16..19], [0, 13, 26]);
    }
}

#[test]
fn a_damaged_header_is_refused_before_anything_is_placed() {
    let (mut r, mut far) = pair(HEADER_DIGEST);
    let mut wire = data_in(100_000);
    wire[20] ^= 1; // inside the BHS: the header digest no longer matches
    far.write_all(&wire).unwrap();
    let mut place = |_: &[u8]| -> Option<(SinkRef, usize)> {
        panic!("asked where damaged data goes");
    };
    let mut out = Vec::new();
    let e = read_until(&mut r, &mut out, &mut place).unwrap_err();
    assert!(matches!(e, Error::Pdu(PduError::HeaderDigest)), "{e}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A stream of Data-In PDUs for task 7 (placed into its sink) and
    /// task 8 (no sink), and status-only responses.
    fn stream(kinds: &[(u8, usize)], dg: Digests) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut at = 16;
        for &(kind, len) in kinds {
            let mut p = Pdu::new(if kind == 2 {
                Opcode::ScsiResponse
            } else {
                Opcode::DataIn
            });
            p.set_itt(7 + u32::from(kind));
            if kind < 2 {
                p.set_u32(40, at as u32);
                p.data = (0..len).map(|i| (at + i) as u8).collect();
                at += len;
            }
            wire.extend(p.encode(dg).unwrap());
        }
        wire
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever a target sends (PDUs with flipped bytes), the reader
        /// places, decodes or refuses it without a panic or a write
        /// outside the sink it was given; undamaged, everything arrives
        /// and lands where it belongs.
        #[test]
        fn a_damaged_stream_is_refused_never_a_panic(
            kinds in proptest::collection::vec((0u8..3, 0usize..150_000), 1..5),
            flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..3),
            header in any::<bool>(),
            data in any::<bool>(),
        ) {
            let dg = Digests { header, data };
            let mut wire = stream(&kinds, dg);
            for &(at, x) in &flips {
                let at = at % wire.len();
                wire[at] ^= x;
            }
            let (mut r, mut far) = pair(dg);
            let size = 16 + kinds.iter().map(|k| k.1).sum::<usize>();
            let sink = mem_sink(size);
            let k = SinkRef(sink.clone());
            // As the session does: task 7's Data-In within its sink.
            let mut place = |bhs: &[u8]| {
                let p = Pdu::from_bhs(bhs)?;
                let at = p.u32_at(40) as usize;
                (p.itt() == 7 && at.checked_add(p.data_segment_length())? <= size)
                    .then(|| (k.clone(), at))
            };
            let sent = wire.clone();
            let writer = std::thread::spawn(move || {
                let _ = far.write_all(&sent);
                let _ = far.shutdown(std::net::Shutdown::Write);
            });
            let mut out = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let end = loop {
                match r.read(&mut out, &mut place) {
                    Err(e) => break e,
                    Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
                prop_assert!(std::time::Instant::now() < deadline, "the reader hung");
            };
            writer.join().unwrap();
            if flips.is_empty() {
                prop_assert!(matches!(end, Error::Closed), "{}", end);
                prop_assert_eq!(out.len(), kinds.len());
                prop_assert_eq!(r.held(), 0);
                let b = sink.0.lock().unwrap();
                let mut at = 16;
                for (&(kind, len), p) in kinds.iter().zip(&out) {
                    if kind == 0 {
                        prop_assert!(p.data.is_empty());
                        prop_assert!(b[at..at + len].iter().enumerate().all(|(i, &x)| x == (at + i) as u8));
                    } else if kind == 1 {
                        prop_assert_eq!(p.data.len(), len);
                    }
                    if kind < 2 {
                        at += len;
                    }
                }
            }
        }
    }
}

/// Found by the `iscsi_reader` fuzz target: while a big Data-In was
/// received into its sink, the bytes held left out its header (the
/// receiver's low-water mark then waited for 48 bytes too many).
#[test]
fn the_bytes_held_count_the_header_of_a_segment_being_placed() {
    let wire = data_in(200_001);
    let cut = 48 + 4 + 100_000;
    let sink = mem_sink(300_000);
    let k = SinkRef(sink.clone());
    let mut place = |bhs: &[u8]| (Pdu::from_bhs(bhs)?.itt() == 7).then(|| (k.clone(), 16));
    let got =
        receive_in_pieces(&wire[..cut], &[40_000], HEADER_DIGEST, 1 << 20, &mut place).unwrap();
    assert!(matches!(got.end, Error::Closed), "{}", got.end);
    assert!(got.pdus.is_empty());
    assert_eq!(got.held, cut);
    // What arrived of the data is in the sink already.
    let b = sink.0.lock().unwrap();
    assert!((0..100_000).all(|i| b[16 + i] == (i * 13) as u8));
}
