// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! iSCSI PDUs (RFC 7143 11): the 48-byte Basic Header Segment, additional
//! header segments, the data segment padded to 4 bytes, and the optional
//! CRC32C header and data digests. Decoding is check-then-parse: `decode`
//! returns `Ok(None)` until a whole PDU is buffered.
//!
//! Received bytes come from a target: no indexing or slicing that a length
//! field could take out of bounds (`get`, `split_at_checked`, or fixed
//! offsets into the 48-byte BHS array).

#![deny(clippy::indexing_slicing, clippy::string_slice)]

use super::bhs::Bhs;

/// Basic Header Segment length (RFC 7143 11.2.1).
pub const BHS_LEN: usize = 48;
/// Reserved tag value (RFC 7143 11.2.1.8: 0xffffffff).
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// Longest data segment a PDU can carry: DataSegmentLength is the 24-bit
/// field in BHS bytes 5-7 (RFC 7143 11.2.1.6).
pub const MAX_DATA_SEGMENT_LENGTH: usize = 0x00ff_ffff;
/// Longest AHS: TotalAHSLength, BHS byte 4, counts 4-byte words (RFC 7143
/// 11.2.1.5).
pub const MAX_AHS_LENGTH: usize = 4 * 0xff;

/// The opcode bits of BHS byte 0 (RFC 7143 11.2.1.2; above them are the
/// I bit and a reserved bit).
pub const OPCODE_MASK: u8 = 0x3f;

/// Opcodes (RFC 7143 11.2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    ReadyToTransfer = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => SnackRequest,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => ReadyToTransfer,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    #[error("Unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("Data segment of {len} bytes exceeds the {max}-byte limit")]
    DataTooLong { len: usize, max: usize },
    #[error("Header digest mismatch")]
    HeaderDigest,
    #[error("Data digest mismatch")]
    DataDigest,
    #[error("PDU parts do not match its header")]
    Truncated,
    #[error("A data segment of {0} bytes does not fit in DataSegmentLength (at most {MAX_DATA_SEGMENT_LENGTH})")]
    SegmentTooLong(usize),
    #[error("An AHS of {0} bytes does not fit in TotalAHSLength (4-byte words, at most {MAX_AHS_LENGTH} bytes)")]
    BadAhsLength(usize),
}

/// Which digests are in use on a connection (negotiated at login).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// One PDU: header fields are read and written in place in `bhs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

/// CRC32C as the digest is sent: little-endian (as Linux targets do).
fn digest(parts: &[&[u8]]) -> [u8; 4] {
    let crc = parts.iter().fold(0u32, |c, p| crc32c::crc32c_append(c, p));
    crc.to_le_bytes()
}

/// A data digest computed piece by piece over data (and padding) that is
/// not kept in one buffer: a segment received straight into guest memory,
/// or sent from there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunningDigest(u32);

impl RunningDigest {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, bytes);
    }

    /// Whether `digest` (as received) is the digest of everything so far.
    pub fn matches(&self, digest: &[u8]) -> bool {
        digest == self.bytes()
    }

    /// The digest of everything so far, as sent.
    pub fn bytes(&self) -> [u8; 4] {
        self.0.to_le_bytes()
    }
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// The zero bytes that pad a data segment of `len` bytes to 4.
pub fn padding(len: usize) -> &'static [u8] {
    const ZEROS: [u8; 3] = [0; 3];
    ZEROS.get(..pad4(len)).unwrap_or_default()
}

impl Pdu {
    pub fn new(op: Opcode) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = op as u8;
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }

    /// A PDU with the BHS `h` and no AHS or data.
    pub fn with_header<T: Bhs>(h: &T) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        // Every `Bhs` is BHS_LEN bytes (checked where each is declared).
        if let Some(src) = h.as_slice().get(..BHS_LEN) {
            bhs.copy_from_slice(src);
        }
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }

    /// The BHS read as `T` (the layout of the PDU's opcode, which the
    /// caller has looked at).
    pub fn header<T: Bhs>(&self) -> T {
        T::read(&self.bhs)
    }

    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.bhs[0] & OPCODE_MASK)
    }

    pub fn set_immediate(&mut self) {
        self.bhs[0] |= super::bhs::IMMEDIATE;
    }

    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    pub fn set_flags(&mut self, f: u8) {
        self.bhs[1] = f;
    }

    /// The BHS bytes at `i..i + N` (offsets of the BHS layout; zeros
    /// past its end).
    fn field<const N: usize>(&self, i: usize) -> [u8; N] {
        self.bhs
            .get(i..)
            .and_then(|b| b.get(..N))
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; N])
    }

    /// Write `v` at BHS offset `i` (nothing past its end).
    fn set_field(&mut self, i: usize, v: &[u8]) {
        if let Some(dst) = self.bhs.get_mut(i..).and_then(|b| b.get_mut(..v.len())) {
            dst.copy_from_slice(v);
        }
    }

    // Raw access by BHS offset, for tests and fuzzing that write PDUs as
    // a target might; protocol code reads and writes the `bhs` views.

    pub fn byte(&self, i: usize) -> u8 {
        let [b] = self.field(i);
        b
    }

    pub fn set_byte(&mut self, i: usize, v: u8) {
        self.set_field(i, &[v]);
    }

    pub fn u16_at(&self, i: usize) -> u16 {
        u16::from_be_bytes(self.field(i))
    }

    pub fn set_u16(&mut self, i: usize, v: u16) {
        self.set_field(i, &v.to_be_bytes());
    }

    pub fn u32_at(&self, i: usize) -> u32 {
        u32::from_be_bytes(self.field(i))
    }

    pub fn set_u32(&mut self, i: usize, v: u32) {
        self.set_field(i, &v.to_be_bytes());
    }

    pub fn lun(&self) -> [u8; 8] {
        self.field(8)
    }

    pub fn set_lun(&mut self, lun: [u8; 8]) {
        self.set_field(8, &lun);
    }

    /// Initiator Task Tag (bytes 16-19 of every PDU).
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v);
    }

    /// Target Transfer Tag (bytes 20-23 where present).
    pub fn ttt(&self) -> u32 {
        self.u32_at(20)
    }

    /// DataSegmentLength as received (`encode` sets it from `data`). A
    /// received Data-In with empty `data` and a non-zero length here had its
    /// segment received straight into its command's sink.
    pub fn data_segment_length(&self) -> usize {
        let [a, b, c] = self.field(5);
        (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)
    }

    /// A PDU with this BHS (the first `BHS_LEN` bytes of `header`) and no
    /// AHS or data; None if `header` is shorter.
    pub fn from_bhs(header: &[u8]) -> Option<Pdu> {
        let bhs: [u8; BHS_LEN] = header.get(..BHS_LEN)?.try_into().ok()?;
        Some(Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        })
    }

    /// StatSN / ExpCmdSN / MaxCmdSN of target PDUs (bytes 24, 28, 32).
    pub fn stat_sn(&self) -> u32 {
        self.u32_at(24)
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.u32_at(28)
    }

    pub fn max_cmd_sn(&self) -> u32 {
        self.u32_at(32)
    }

    /// Encode with the given digests. The length fields come from `ahs`
    /// and `data`; lengths they cannot hold are refused.
    pub fn encode(&self, dg: Digests) -> Result<Vec<u8>, PduError> {
        let mut out = Vec::with_capacity(BHS_LEN + self.ahs.len() + self.data.len() + 12);
        self.encode_into(dg, &mut out)?;
        Ok(out)
    }

    /// Append the wire form to `out` (a transmit buffer reused across PDUs).
    pub fn encode_into(&self, dg: Digests, out: &mut Vec<u8>) -> Result<(), PduError> {
        self.encode_with(&self.data, dg, out)
    }

    /// Append the wire form with `data` as the data segment (instead of
    /// `self.data`, which is ignored): write data goes from the command's
    /// buffer to the transmit buffer with one copy.
    pub fn encode_with(&self, data: &[u8], dg: Digests, out: &mut Vec<u8>) -> Result<(), PduError> {
        out.reserve(BHS_LEN + self.ahs.len() + data.len() + 12);
        self.encode_header(data.len(), dg, out)?;
        if !data.is_empty() {
            out.extend_from_slice(data);
            let p = padding(data.len());
            out.extend_from_slice(p);
            if dg.data {
                out.extend_from_slice(&digest(&[data, p]));
            }
        }
        Ok(())
    }

    /// Append the header (BHS with DataSegmentLength `dsl`, AHS, header
    /// digest): the data segment, its padding (`padding`) and data digest
    /// follow from elsewhere. A `dsl` over `MAX_DATA_SEGMENT_LENGTH`, or an
    /// AHS that TotalAHSLength cannot describe, is refused with nothing
    /// appended: its length field would read as another length, and the
    /// peer would take the data for PDUs.
    pub fn encode_header(
        &self,
        dsl: usize,
        dg: Digests,
        out: &mut Vec<u8>,
    ) -> Result<(), PduError> {
        let dsl = u32::try_from(dsl)
            .ok()
            .filter(|&n| n as usize <= MAX_DATA_SEGMENT_LENGTH)
            .ok_or(PduError::SegmentTooLong(dsl))?;
        let ahs = self.ahs.len();
        let ahs_words = u8::try_from(ahs / 4)
            .ok()
            .filter(|_| ahs % 4 == 0)
            .ok_or(PduError::BadAhsLength(ahs))?;
        let [_, d0, d1, d2] = dsl.to_be_bytes();
        let mut bhs = self.bhs;
        bhs[4] = ahs_words;
        bhs[5] = d0;
        bhs[6] = d1;
        bhs[7] = d2;
        out.extend_from_slice(&bhs);
        out.extend_from_slice(&self.ahs);
        if dg.header {
            let d = digest(&[&bhs, &self.ahs]);
            out.extend_from_slice(&d);
        }
        Ok(())
    }
}

/// Where the parts of a PDU are, from its BHS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// BHS, AHS and header digest.
    pub header: usize,
    /// DataSegmentLength.
    pub data: usize,
    /// Everything: header, padded data, data digest.
    pub total: usize,
}

/// The layout of the PDU at the front of `buf`, once its BHS is there
/// (Ok(None) before); unknown opcodes and data segments over `max_data`
/// are errors.
pub fn layout(buf: &[u8], dg: Digests, max_data: usize) -> Result<Option<Layout>, PduError> {
    let Some(bhs) = Pdu::from_bhs(buf) else {
        return Ok(None);
    };
    let op = bhs.byte(0) & OPCODE_MASK;
    if Opcode::from_u8(op).is_none() {
        return Err(PduError::UnknownOpcode(op));
    }
    let ahs_len = usize::from(bhs.byte(4)) * 4;
    let dsl = bhs.data_segment_length();
    if dsl > max_data {
        return Err(PduError::DataTooLong {
            len: dsl,
            max: max_data,
        });
    }
    let hd = if dg.header { 4 } else { 0 };
    let dd = if dg.data && dsl > 0 { 4 } else { 0 };
    let header = BHS_LEN + ahs_len + hd;
    Ok(Some(Layout {
        header,
        data: dsl,
        total: header + dsl + pad4(dsl) + dd,
    }))
}

/// Decode one PDU from the front of `buf`: Ok(None) while incomplete,
/// otherwise the PDU and the number of bytes it used.
pub fn decode(buf: &[u8], dg: Digests, max_data: usize) -> Result<Option<(Pdu, usize)>, PduError> {
    let Some(l) = layout(buf, dg, max_data)? else {
        return Ok(None);
    };
    if buf.len() < l.total {
        return Ok(None);
    }
    let (header, rest) = buf.split_at_checked(l.header).ok_or(PduError::Truncated)?;
    let payload = rest.get(..l.total - l.header).ok_or(PduError::Truncated)?;
    let p = decode_split(header, payload.to_vec(), dg)?;
    Ok(Some((p, l.total)))
}

/// Decode a PDU received in two parts: `header` (BHS, AHS, header digest)
/// and `payload` (padded data segment and data digest), whose buffer
/// becomes the PDU's data without a copy. The lengths must agree with the
/// header's (`layout`).
pub fn decode_split(header: &[u8], mut payload: Vec<u8>, dg: Digests) -> Result<Pdu, PduError> {
    let (mut p, l) = decode_header(header, dg)?;
    if l.total - l.header != payload.len() {
        return Err(PduError::Truncated);
    }
    let padded = l.data + pad4(l.data);
    if dg.data && l.data > 0 {
        let (segment, received) = payload
            .split_at_checked(padded)
            .ok_or(PduError::Truncated)?;
        if received != digest(&[segment]) {
            return Err(PduError::DataDigest);
        }
    }
    payload.truncate(l.data);
    p.data = payload;
    Ok(p)
}

/// Decode a PDU's header alone (BHS, AHS, header digest, all of `header`):
/// the PDU without its data segment, and where its parts are. A Data-In
/// whose segment is received straight into its command's sink is passed on
/// in this form.
pub fn decode_header(header: &[u8], dg: Digests) -> Result<(Pdu, Layout), PduError> {
    let l = layout(header, dg, usize::MAX)?
        .filter(|l| l.header == header.len())
        .ok_or(PduError::Truncated)?;
    let hd = if dg.header { 4 } else { 0 };
    let (bhs_ahs, received) = header
        .split_at_checked(l.header - hd)
        .ok_or(PduError::Truncated)?;
    if dg.header && received != digest(&[bhs_ahs]) {
        return Err(PduError::HeaderDigest);
    }
    let (bhs, ahs) = bhs_ahs
        .split_at_checked(BHS_LEN)
        .ok_or(PduError::Truncated)?;
    let mut p = Pdu::from_bhs(bhs).ok_or(PduError::Truncated)?;
    p.ahs = ahs.to_vec();
    Ok((p, l))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_computed_in_pieces_matches_the_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut c = RunningDigest::default();
        for part in data.chunks(333) {
            c.update(part);
        }
        assert!(c.matches(&digest(&[&data])));
        c.update(&[0]);
        assert!(!c.matches(&digest(&[&data])));
    }

    #[test]
    fn crc32c_matches_rfc3720_test_vectors() {
        // RFC 3720 B.4: 32 bytes of zeros -> aa 36 91 8a (CRC, sent LSB first).
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c::crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c::crc32c(&inc), 0x46dd_794e);
    }

    #[test]
    fn round_trip_every_opcode_with_and_without_digests() {
        for op in [
            0x00u8, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
            0x26, 0x31, 0x32, 0x3f,
        ] {
            for (h, d) in [(false, false), (true, false), (false, true), (true, true)] {
                let dg = Digests { header: h, data: d };
                let mut p = Pdu::new(Opcode::from_u8(op).unwrap());
                p.set_flags(0x80);
                p.set_itt(0x1234_5678);
                p.set_u32(24, 7);
                p.data = b"InitiatorName=iqn.x".to_vec(); // 19 bytes: padded to 20
                let wire = p.encode(dg).unwrap();
                assert_eq!(wire.len() % 4, 0);
                let (q, used) = decode(&wire, dg, 1 << 20).unwrap().unwrap();
                assert_eq!(used, wire.len());
                assert_eq!(q.data, p.data);
                assert_eq!(q.itt(), 0x1234_5678);
                assert_eq!(q.opcode().map(|o| o as u8), Some(op));
                assert_eq!(q.u32_at(4) & 0x00ff_ffff, 19); // DataSegmentLength
            }
        }
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let mut p = Pdu::new(Opcode::NopIn);
        p.data = vec![1; 10];
        let wire = p.encode(Digests::default()).unwrap();
        for cut in [0, 47, 48, 57, wire.len() - 1] {
            assert_eq!(decode(&wire[..cut], Digests::default(), 1 << 20), Ok(None));
        }
    }

    #[test]
    fn corrupted_digests_are_detected() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let mut p = Pdu::new(Opcode::DataIn);
        p.data = vec![7; 16];
        let mut wire = p.encode(dg).unwrap();
        wire[60] ^= 1; // a data byte
        assert_eq!(decode(&wire, dg, 1 << 20), Err(PduError::DataDigest));
        let mut wire = p.encode(dg).unwrap();
        wire[20] ^= 1; // a header byte
        assert_eq!(decode(&wire, dg, 1 << 20), Err(PduError::HeaderDigest));
    }

    #[test]
    fn the_longest_data_segment_the_field_holds_is_encoded() {
        let mut p = Pdu::new(Opcode::DataOut);
        p.data = vec![0; MAX_DATA_SEGMENT_LENGTH]; // 2^24 - 1 bytes
        let wire = p.encode(Digests::default()).unwrap();
        assert_eq!(wire[5..8], [0xff, 0xff, 0xff]); // DataSegmentLength
        assert_eq!(wire.len(), BHS_LEN + (1 << 24)); // padded by one byte
    }

    #[test]
    fn a_data_segment_the_field_cannot_hold_is_refused() {
        let p = Pdu::new(Opcode::DataOut);
        let mut out = Vec::new();
        // 2^24 bytes: DataSegmentLength would read 0.
        assert_eq!(
            p.encode_header(1 << 24, Digests::default(), &mut out),
            Err(PduError::SegmentTooLong(1 << 24))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn an_ahs_the_length_field_cannot_describe_is_refused() {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.ahs = vec![0; 6]; // not a whole number of 4-byte words
        assert_eq!(p.encode(Digests::default()), Err(PduError::BadAhsLength(6)));
        p.ahs = vec![0; MAX_AHS_LENGTH + 4]; // 256 words
        assert_eq!(
            p.encode(Digests::default()),
            Err(PduError::BadAhsLength(MAX_AHS_LENGTH + 4))
        );
        p.ahs = vec![0; MAX_AHS_LENGTH]; // 255 words
        assert_eq!(p.encode(Digests::default()).unwrap()[4], 0xff); // TotalAHSLength
    }

    #[test]
    fn oversized_data_segment_is_refused_before_buffering_it() {
        let mut b = [0u8; 48];
        b[0] = 0x25;
        b[5] = 0x10; // 1 MiB
        assert!(matches!(
            decode(&b, Digests::default(), 65536),
            Err(PduError::DataTooLong { .. })
        ));
    }

    #[test]
    fn unknown_opcode_is_an_error() {
        let mut b = [0u8; 48];
        b[0] = 0x1f;
        assert_eq!(
            decode(&b, Digests::default(), 1 << 20),
            Err(PduError::UnknownOpcode(0x1f))
        );
    }

    #[test]
    fn a_pdu_decoded_in_two_parts_equals_one_decoded_whole() {
        for dg in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let mut p = Pdu::new(Opcode::DataIn);
            p.set_itt(7);
            p.data = (0..70_001u32).map(|i| i as u8).collect();
            let wire = p.encode(dg).unwrap();
            let l = layout(&wire, dg, 1 << 20).unwrap().unwrap();
            assert_eq!(l.total, wire.len());
            let split = decode_split(&wire[..l.header], wire[l.header..].to_vec(), dg).unwrap();
            assert_eq!(split, decode(&wire, dg, 1 << 20).unwrap().unwrap().0);
            assert_eq!(split.data, p.data);
            // A damaged payload or a wrong length is an error, not a panic.
            let mut bad = wire[l.header..].to_vec();
            bad[5] ^= 1;
            let r = decode_split(&wire[..l.header], bad, dg);
            assert_eq!(r.is_err(), dg.data);
            assert_eq!(
                decode_split(&wire[..l.header], wire[l.header + 1..].to_vec(), dg),
                Err(PduError::Truncated)
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), h in any::<bool>(), d in any::<bool>()) {
                let _ = decode(&bytes, Digests { header: h, data: d }, 4096);
            }
        }
    }
}
