// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What an iSCSI target sends: PDUs, text keys, Login Responses, and PDUs
//! in the full-feature phase.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Result, Unstructured};

use crate::iscsi::bhs::{self, Bhs};
use crate::iscsi::chap::{self, Algorithm};
use crate::iscsi::codes::TmfFunction;
use crate::iscsi::gather::Gather;
use crate::iscsi::login::{
    Credentials, Login, LoginError, LoginParams, Negotiated, Step, LENGTH_KEY_RANGE,
};
use crate::iscsi::pdu::{self, Digests, Opcode, Pdu, BHS_LEN};
use crate::iscsi::session::{Awaited, Data, Event, Session, Sink, SinkRef};
use crate::iscsi::{text, url};

/// Byte 0: digests and the data limit; the rest: PDUs back to back.
pub fn iscsi_pdu(data: &[u8]) {
    let Some((&mode, mut buf)) = data.split_first() else {
        return;
    };
    let dg = Digests {
        header: mode & 1 != 0,
        data: mode & 2 != 0,
    };
    let max_data = if mode & 4 != 0 { 8192 } else { 1 << 20 };
    while let Ok(Some((p, used))) = pdu::decode(buf, dg, max_data) {
        assert!(used >= BHS_LEN && used <= buf.len());
        // What was decoded encodes and decodes back to itself.
        let wire = p.encode(dg).expect("a decoded PDU encodes");
        assert_eq!(
            pdu::decode(&wire, dg, max_data),
            Ok(Some((p.clone(), wire.len())))
        );
        let l = pdu::layout(buf, dg, max_data)
            .ok()
            .flatten()
            .expect("the layout of a decoded PDU");
        assert_eq!(l.total, used);
        let (head, rest) = buf.split_at(l.header);
        let payload = rest.get(..l.total - l.header).unwrap_or_default();
        assert_eq!(pdu::decode_split(head, payload.to_vec(), dg), Ok(p));
        buf = rest.get(l.total - l.header..).unwrap_or_default();
    }
    let _ = pdu::Pdu::from_bhs(buf).map(|p| (p.opcode(), p.data_segment_length()));
}

/// A Login or Text data segment.
pub fn iscsi_text(data: &[u8]) {
    let pairs = text::parse(data);
    // Parsed pairs encode and parse back to themselves.
    assert_eq!(text::parse(&text::encode(&pairs)), pairs);
    // The last value of a key is the one that counts.
    if let Some((k, v)) = pairs.last() {
        assert_eq!(text::get(&pairs, k), Some(v.as_str()));
    }
    for (_, v) in &pairs {
        if let Some(b) = text::decode_binary(v) {
            assert_eq!(text::decode_binary(&text::encode_hex(&b)), Some(b));
        }
        if let Some(a) = url::portal_address(v) {
            assert_eq!(url::portal_address(&a).as_deref(), Some(a.as_str()));
        }
    }
    let _ = text::decode_hex(data);
    let _ = text::answers_to(&pairs, &["HeaderDigest", "MaxBurstLength"]);
    if let Ok(f) = text::full_feature_keys(&pairs) {
        assert!(f
            .max_xmit_data_segment_length
            .is_none_or(|n| LENGTH_KEY_RANGE.contains(&n)));
    }
}

/// Keys a target sends during login, so that most generated values meet
/// a key the login looks at.
const LOGIN_KEYS: &[&str] = &[
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "CHAP_N",
    "CHAP_R",
    "TargetAddress",
    "HeaderDigest",
    "DataDigest",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "InitialR2T",
    "ImmediateData",
    "MaxOutstandingR2T",
    "DefaultTime2Wait",
    "OFMarker",
    "X-vendor",
];

const LOGIN_VALUES: &[&str] = &[
    "CHAP",
    "None",
    "CHAP,None",
    "5",
    "6",
    "7",
    "7,6,5",
    "Reject",
    "NotUnderstood",
    "Irrelevant",
    "Yes",
    "No",
    "CRC32C",
    "512",
    "8192",
    "16777215",
    "16777216",
    "0",
    "tgt",
];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> Result<&'a str> {
    u.choose(from).copied()
}

/// A value as a target might send it: a word of the protocol, a binary
/// value (hex or base64, sometimes broken), or any string.
fn value(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=4)? {
        0 | 1 => pick(u, LOGIN_VALUES)?.to_string(),
        2 => text::encode_hex(&Vec::<u8>::arbitrary(u)?),
        3 => format!("0b{}", String::arbitrary(u)?),
        _ => String::arbitrary(u)?,
    })
}

/// Keys for a target PDU's data segment, or raw bytes.
fn segment(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    if u.ratio(1, 4)? {
        return Vec::arbitrary(u);
    }
    let mut keys = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let k = if u.ratio(7, 8)? {
            pick(u, LOGIN_KEYS)?.to_string()
        } else {
            String::arbitrary(u)?
        };
        keys.push((k, value(u)?));
    }
    Ok(text::encode(&keys))
}

fn credentials(user: &str, secret: &str) -> Credentials {
    Credentials {
        user: user.into(),
        secret: secret.into(),
    }
}

/// The target's secret for mutual CHAP in `iscsi_login`.
const TARGET_SECRET: &[u8] = b"tsecret1234567";

/// A login (with or without CHAP, mutual or not, any algorithms offered)
/// driven by arbitrary Login Responses; sometimes the target answers our
/// mutual CHAP challenge correctly, so that the login gets past it.
pub fn iscsi_login(data: &[u8]) {
    let _ = login(&mut Unstructured::new(data));
}

fn login(u: &mut Unstructured<'_>) -> Result<()> {
    let chap = u.arbitrary::<bool>()?;
    let mutual = chap && u.arbitrary::<bool>()?;
    let offers = [
        "sha256:sha1:md5",
        "md5",
        "sha1",
        "sha256",
        "sha1:md5",
        "sha256:md5",
    ];
    let chap_offer = chap::Offer::parse(pick(u, &offers)?).unwrap_or(chap::Offer::ALL);
    let params = LoginParams {
        initiator_name: "iqn.2026-12.fuzz:i".into(),
        target_name: u.arbitrary::<bool>()?.then(|| "iqn.2026-12.fuzz:t".into()),
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 0,
        chap: chap.then(|| credentials("u", "secret12345678")),
        mutual: mutual.then(|| credentials("tgt", "tsecret1234567")),
        header_digest: u.arbitrary()?,
        data_digest: u.arbitrary()?,
        max_recv_data_segment_length: 262144,
        max_burst_length: 1 << 20,
        first_burst_length: 65536,
        initial_cmd_sn: 1,
        chap_offer,
    };
    let mut l = Login::new(params);
    let mut sent = l.start();
    // Whether the target itself sent our secret's text (an error may then
    // quote it without anything leaking).
    let mut echoed = false;
    for _ in 0..24 {
        let mut r = if u.ratio(1, 16)? {
            // Anything at all, even another opcode.
            let mut r = Pdu::new(Opcode::LoginResponse);
            r.bhs = u.arbitrary()?;
            r
        } else {
            let mut h = bhs::LoginResponse::new();
            h.flags = u.arbitrary()?;
            h.tsih = u.arbitrary::<u16>()?.into();
            h.stat_sn = u.arbitrary::<u32>()?.into();
            if u.ratio(1, 8)? {
                h.status_class = u.int_in_range(0..=4)?;
                h.status_detail = u.arbitrary()?;
            }
            Pdu::with_header(&h)
        };
        r.data = segment(u)?;
        if mutual && u.ratio(1, 2)? {
            r.data.extend(text::encode(&mutual_answer(&sent)));
        }
        echoed |= String::from_utf8_lossy(&r.data).contains("secret1234567");
        match l.receive(&r) {
            Ok(Step::Send(p)) => {
                let wire = p
                    .encode(Digests::default())
                    .expect("a login request encodes");
                assert!(pdu::decode(&wire, Digests::default(), 1 << 20).is_ok());
                sent = p;
            }
            Ok(Step::Done(n)) => {
                check_negotiated(&n);
                return Ok(());
            }
            Err(e) => {
                if let LoginError::Redirect { address, .. } = &e {
                    let _ = url::portal_address(address);
                }
                assert!(echoed || !e.to_string().contains("secret1234567"), "{e}");
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The target's correct answer to the mutual CHAP challenge in our last
/// request, if it had one.
fn mutual_answer(sent: &Pdu) -> Vec<(String, String)> {
    let keys = text::parse(&sent.data);
    let (Some(id), Some(challenge)) = (
        text::get(&keys, "CHAP_I").and_then(|v| v.parse::<u8>().ok()),
        text::get(&keys, "CHAP_C").and_then(text::decode_binary),
    ) else {
        return Vec::new();
    };
    let alg = Algorithm::ALL
        .into_iter()
        .find(|a| a.digest_len() == challenge.len())
        .unwrap_or(Algorithm::Md5);
    let r = chap::response(alg, id, TARGET_SECRET, &challenge);
    vec![
        ("CHAP_N".into(), "tgt".into()),
        ("CHAP_R".into(), text::encode_hex(&r)),
    ]
}

fn check_negotiated(n: &Negotiated) {
    for len in [
        n.max_xmit_data_segment_length,
        n.max_burst_length,
        n.first_burst_length,
    ] {
        assert!(LENGTH_KEY_RANGE.contains(&len), "{len}");
    }
}

/// Read data lands here; out-of-range writes are refused, as guest
/// memory's sink does.
struct MemSink(Mutex<Vec<u8>>);

impl Sink for MemSink {
    fn size(&self) -> usize {
        self.0.lock().map_or(0, |b| b.len())
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> bool {
        let Ok(mut b) = self.0.lock() else {
            return false;
        };
        let end = offset.saturating_add(data.len());
        match b.get_mut(offset..end) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    fn read_from(&self, _: RawFd, _: usize, _: usize, _: &mut [u8]) -> Option<io::Result<usize>> {
        None
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
        let Ok(b) = self.0.lock() else {
            return false;
        };
        let end = offset.saturating_add(buf.len());
        match b.get(offset..end) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// Target opcodes (RFC 7143 11.2.1.2), so that most PDUs reach a handler.
const TARGET_OPS: [u8; 10] = [0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f];

fn length(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(match u.int_in_range(0..=3)? {
        0 => *LENGTH_KEY_RANGE.start(),
        1 => *LENGTH_KEY_RANGE.end(),
        _ => u.int_in_range(LENGTH_KEY_RANGE)?,
    })
}

/// What login could have settled on (every length in its range).
fn negotiated(u: &mut Unstructured<'_>) -> Result<Negotiated> {
    Ok(Negotiated {
        digests: Digests {
            header: u.arbitrary()?,
            data: u.arbitrary()?,
        },
        max_xmit_data_segment_length: length(u)?,
        max_recv_data_segment_length: length(u)?,
        max_burst_length: length(u)?,
        first_burst_length: length(u)?,
        initial_r2t: u.arbitrary()?,
        immediate_data: u.arbitrary()?,
        max_outstanding_r2t: u.int_in_range(1..=4)?,
        data_pdu_in_order: true,
        data_sequence_in_order: true,
        default_time2wait: u.arbitrary()?,
        default_time2retain: 0,
        tsih: u.arbitrary()?,
        cmd_sn: u.arbitrary()?,
        exp_cmd_sn: u.arbitrary()?,
        max_cmd_sn: u.arbitrary()?,
        exp_stat_sn: u.arbitrary()?,
        chap: None,
        target_keys: Vec::new(),
    })
}

/// A target PDU: mostly naming a task we have out, with data where a
/// command's data would go, or announced and not carried (placed).
fn target_pdu(u: &mut Unstructured<'_>, itts: &[u32]) -> Result<Pdu> {
    let mut p = Pdu::new(Opcode::from_u8(*u.choose(&TARGET_OPS)?).unwrap_or(Opcode::NopIn));
    let bhs: [u8; BHS_LEN] = u.arbitrary()?;
    p.bhs[1..].copy_from_slice(bhs.get(1..).unwrap_or_default());
    if !itts.is_empty() && u.ratio(7, 8)? {
        p.set_itt(*u.choose(itts)?);
    }
    if u.ratio(1, 2)? {
        p.set_u32(40, u.int_in_range(0..=70_000)?);
    }
    let data: Vec<u8> = if u.ratio(1, 2)? {
        segment(u)?
    } else {
        Vec::arbitrary(u)?
    };
    if u.ratio(1, 4)? {
        // Placed: the length is announced, the data went to the sink.
        let [_, a, b, c] = u32::try_from(data.len()).unwrap_or(0).to_be_bytes();
        p.bhs[5] = a;
        p.bhs[6] = b;
        p.bhs[7] = c;
    } else {
        p.data = data;
    }
    Ok(p)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Command,
    Tmf,
}

/// The full-feature session after login: commands of every kind submitted,
/// task management, pings, text and logout requests, and whatever PDUs a
/// target sends, in any order. Every task ends at most once, and as what
/// it is.
pub fn iscsi_session(data: &[u8]) {
    let _ = session(&mut Unstructured::new(data));
}

fn session(u: &mut Unstructured<'_>) -> Result<()> {
    let n = negotiated(u)?;
    let dg = n.digests;
    let mut s = Session::new(n);
    let mut tasks: HashMap<u64, Kind> = HashMap::new();
    let mut ended: Vec<u64> = Vec::new();
    let mut itts: Vec<u32> = Vec::new();
    let lun = [0, 1, 0, 0, 0, 0, 0, 0];
    let mut tag = 0u64;
    let mut tx = Gather::default();
    let mut result = Ok(());
    for _ in 0..u.int_in_range(1..=32)? {
        tag += 1;
        match u.int_in_range(0..=12)? {
            0 => {
                let d = Data::Read(u.int_in_range(0..=100_000)?);
                itts.push(s.submit(tag, lun, [0x28; 10], d));
                tasks.insert(tag, Kind::Command);
            }
            1 => {
                let len = u.int_in_range(0..=40_000)?;
                let d = Data::Write(vec![0x5a; len]);
                itts.push(s.submit(tag, lun, [0x2a; 10], d));
                tasks.insert(tag, Kind::Command);
            }
            2 => {
                let len = u.int_in_range(0..=100_000)?;
                let sink = Arc::new(MemSink(Mutex::new(vec![0; len])));
                let d = Data::ReadInto(SinkRef(sink));
                itts.push(s.submit(tag, lun, [0x28; 10], d));
                tasks.insert(tag, Kind::Command);
            }
            3 => {
                itts.push(s.submit(tag, lun, [0; 6], Data::None));
                tasks.insert(tag, Kind::Command);
            }
            4 => {
                let Ok(function) = TmfFunction::try_from(u.int_in_range(1..=7)?) else {
                    continue;
                };
                let referenced = u.int_in_range(0..=tag)?;
                let start = s.task_management(tag, function, lun, Some(referenced));
                for t in start.aborted {
                    assert_eq!(tasks.get(&t), Some(&Kind::Command));
                    ended.push(t);
                }
                tasks.insert(tag, Kind::Tmf);
            }
            5 => s.ping(),
            6 => s.text_request(&[("SendTargets", "All")]),
            7 => s.logout(),
            8 => {
                let _ = s.poll_transmit();
            }
            9 => {
                if let Err(e) = s.transmit_into(dg, &mut tx) {
                    panic!("a negotiated session cannot encode its PDUs: {e}");
                }
            }
            _ => {
                if let Err(e) = s.transmit_into(dg, &mut tx) {
                    panic!("a negotiated session cannot encode its PDUs: {e}");
                }
                let p = target_pdu(u, &itts)?;
                let _ = s.place(&p.bhs);
                match s.receive(p) {
                    Ok(events) => {
                        for e in events {
                            note_end(&e, &tasks, &mut ended);
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
    }
    // Tasks end as what they are, once at most.
    let mut once = ended.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(once.len(), ended.len(), "{ended:?}");
    let _ = result;
    let again = s.take_unfinished();
    assert!(again
        .iter()
        .all(|c| tasks.get(&c.0) == Some(&Kind::Command) && !ended.contains(&c.0)));
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.awaited(), Awaited::default());
    Ok(())
}

fn note_end(e: &Event, tasks: &HashMap<u64, Kind>, ended: &mut Vec<u64>) {
    match e {
        Event::Completed(c) => {
            assert_eq!(tasks.get(&c.tag), Some(&Kind::Command), "{}", c.tag);
            ended.push(c.tag);
        }
        Event::Terminated { tag, .. } => {
            assert_eq!(tasks.get(tag), Some(&Kind::Command), "{tag}");
            ended.push(*tag);
        }
        Event::TaskManagement { tag, .. } => {
            assert_eq!(tasks.get(tag), Some(&Kind::Tmf), "{tag}");
            ended.push(*tag);
        }
        _ => {}
    }
}

/// A command's buffer for `iscsi_reader`: receives from the socket as
/// guest memory does, and closes (its command ended) after a given number
/// of uses. Being asked for a byte outside it is a finding.
struct ReaderSink {
    buf: Mutex<Vec<u8>>,
    uses_left: std::sync::atomic::AtomicUsize,
}

impl ReaderSink {
    fn open(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.uses_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn closed(&self) -> bool {
        self.uses_left.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    fn contents(&self) -> Vec<u8> {
        self.buf.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Sink for ReaderSink {
    fn size(&self) -> usize {
        self.buf.lock().map_or(0, |b| b.len())
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> bool {
        if !self.open() {
            return false;
        }
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let size = b.len();
        let dst = b
            .get_mut(offset..offset.saturating_add(data.len()))
            .unwrap_or_else(|| {
                panic!(
                    "{} bytes written at {offset} of a {size}-byte sink",
                    data.len()
                )
            });
        dst.copy_from_slice(data);
        true
    }

    fn read_from(
        &self,
        fd: RawFd,
        offset: usize,
        len: usize,
        after: &mut [u8],
    ) -> Option<io::Result<usize>> {
        if !self.open() {
            return None;
        }
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let size = b.len();
        let dst = b
            .get_mut(offset..offset.saturating_add(len))
            .unwrap_or_else(|| panic!("{len} bytes received at {offset} of a {size}-byte sink"));
        Some(crate::iscsi::client::read_two(fd, dst, after))
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
        if self.closed() {
            return false;
        }
        let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let src = b
            .get(offset..offset.saturating_add(buf.len()))
            .unwrap_or_else(|| {
                panic!(
                    "{} bytes read back at {offset} of a {}-byte sink",
                    buf.len(),
                    b.len()
                )
            });
        buf.copy_from_slice(src);
        true
    }
}

/// How a stream ends when decoded in one piece.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// After its last PDU.
    Whole,
    /// Inside a PDU (its header or data not all there).
    Partial,
    /// At a PDU it refuses (unknown opcode, segment over the limit, digest).
    Refused,
}

/// What a target sends (Data-Ins for our reads, most of them placed
/// straight into their buffers, responses, pings, bytes of anything, some
/// of them damaged), cut into pieces of any size, through the receiving
/// half of a connection and a real loopback socket. It must come out as
/// the same stream decoded in one piece does, every placed byte where it
/// belongs and none outside its buffer; bytes left over are only those of
/// a PDU still coming.
pub fn iscsi_reader(data: &[u8]) {
    let _ = reader(&mut Unstructured::new(data));
}

fn reader(u: &mut Unstructured<'_>) -> Result<()> {
    use crate::iscsi::client::receive_in_pieces;
    use crate::iscsi::conn::Error;
    let n = negotiated(u)?;
    let dg = n.digests;
    let max_data = n.max_recv_data_segment_length as usize;
    let mut s = Session::new(n);
    let lun = [0, 1, 0, 0, 0, 0, 0, 0];
    let mut reads = Vec::new();
    for tag in 1..=u.int_in_range(1..=3)? {
        let len = if u.ratio(2, 3)? {
            u.int_in_range(0..=4096)?
        } else {
            u.int_in_range(0..=200_000)?
        };
        let uses = if u.ratio(1, 8)? {
            u.int_in_range(0..=8)?
        } else {
            usize::MAX
        };
        let sink = Arc::new(ReaderSink {
            buf: Mutex::new(vec![0; len]),
            uses_left: uses.into(),
        });
        let itt = s.submit(tag, lun, [0x28; 10], Data::ReadInto(SinkRef(sink.clone())));
        reads.push((itt, sink));
    }
    let mut tx = Gather::default();
    if let Err(e) = s.transmit_into(dg, &mut tx) {
        panic!("a negotiated session cannot encode its PDUs: {e}");
    }
    let itts: Vec<u32> = reads.iter().map(|r| r.0).collect();
    let mut stream = Vec::new();
    for _ in 0..u.int_in_range(1..=6)? {
        if u.ratio(1, 8)? {
            stream.extend(Vec::<u8>::arbitrary(u)?);
            continue;
        }
        let op = match u.int_in_range(0..=5)? {
            0..=3 => Opcode::DataIn,
            4 => Opcode::ScsiResponse,
            _ => Opcode::NopIn,
        };
        let mut p = Pdu::new(op);
        p.set_itt(if u.ratio(7, 8)? {
            *u.choose(&itts)?
        } else {
            u.arbitrary()?
        });
        let len = match u.int_in_range(0..=9)? {
            0..=4 => u.int_in_range(0..=512)?,
            5..=7 => u.int_in_range(0..=70_000)?,
            // Around the size read past the receive buffer (64 KiB).
            _ => u.int_in_range(60_000..=140_000)?,
        };
        let offset = if u.ratio(1, 2)? {
            0
        } else {
            u.int_in_range(0..=200_000)?
        };
        p.set_u32(40, offset);
        let seed: u8 = u.arbitrary()?;
        p.data = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        if let Ok(wire) = p.encode(dg) {
            stream.extend(wire);
        }
    }
    for _ in 0..u.int_in_range(0..=2)? {
        if let Some(last) = stream.len().checked_sub(1) {
            let at = u.int_in_range(0..=last)?;
            stream[at] ^= u.int_in_range(1..=255)?;
        }
    }
    // Cut short: the connection ends inside a PDU.
    if u.ratio(1, 4)? {
        let at = u.int_in_range(0..=stream.len())?;
        stream.truncate(at);
    }
    let mut pieces = Vec::new();
    for _ in 0..u.int_in_range(0..=16)? {
        pieces.push(if u.ratio(1, 2)? {
            u.int_in_range(1..=64)?
        } else {
            u.int_in_range(1..=100_000)?
        });
    }

    // The same stream decoded in one piece, placed data written to a model
    // of each buffer.
    let mut expect = Vec::new();
    let mut model: Vec<Vec<u8>> = reads.iter().map(|r| r.1.contents()).collect();
    let mut pos = 0;
    let end = loop {
        let buf = stream.get(pos..).unwrap_or_default();
        let l = match pdu::layout(buf, dg, max_data) {
            Err(_) => break StreamEnd::Refused,
            Ok(None) if buf.is_empty() => break StreamEnd::Whole,
            Ok(None) => break StreamEnd::Partial,
            Ok(Some(l)) if buf.len() < l.total => break StreamEnd::Partial,
            Ok(Some(l)) => l,
        };
        let Ok(mut p) = pdu::decode_split(&buf[..l.header], buf[l.header..l.total].to_vec(), dg)
        else {
            break StreamEnd::Refused;
        };
        if p.opcode() == Some(Opcode::DataIn) && l.data > 0 {
            if let Some((_, at)) = s.place(&p.bhs) {
                let i = itts
                    .iter()
                    .position(|&t| t == p.itt())
                    .expect("placed for one of ours");
                model[i][at..at + p.data.len()].copy_from_slice(&p.data);
                p.data.clear();
            }
        }
        expect.push(p);
        pos += l.total;
    };

    let mut place = |bhs: &[u8]| s.place(bhs);
    let got = match receive_in_pieces(&stream, &pieces, dg, max_data, &mut place) {
        Ok(got) => got,
        // No loopback socket to be had (descriptors): nothing was tested.
        Err(e) if e.kind() != io::ErrorKind::TimedOut => return Ok(()),
        Err(e) => panic!("{e}"),
    };
    // A buffer that closed under a segment drops the rest of it, and its
    // digest with it: the stream then differs from the one in one piece.
    if reads.iter().any(|r| r.1.closed()) {
        return Ok(());
    }
    let closed = matches!(got.end, Error::Closed);
    assert_eq!(
        got.pdus.len(),
        expect.len(),
        "ended with {}, in one piece {end:?}",
        got.end
    );
    for (g, e) in got.pdus.iter().zip(&expect) {
        assert_eq!((g.bhs, &g.ahs, &g.data), (e.bhs, &e.ahs, &e.data));
    }
    match end {
        StreamEnd::Whole => {
            assert!(closed, "{}", got.end);
            assert_eq!(got.held, 0);
            for (r, m) in reads.iter().zip(&model) {
                assert!(
                    r.1.contents() == *m,
                    "a buffer differs from the stream's data"
                );
            }
        }
        StreamEnd::Partial => {
            if closed {
                assert_eq!(got.held, stream.len() - pos);
            }
        }
        StreamEnd::Refused => assert!(!closed, "a PDU refused in one piece was accepted"),
    }
    Ok(())
}
