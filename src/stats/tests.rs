// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

use std::time::Duration;

use super::*;

fn good(bytes: u64) -> End {
    End::Status {
        status: 0,
        sense_key: 0,
        bytes,
    }
}

#[test]
fn reads_writes_and_others_are_counted_with_their_bytes() {
    let s = LunStats::new(2);
    let t0 = Stamp::now();
    let r = s.start(0, 0x28, t0); // READ(10)
    let w = s.start(1, 0x8a, t0); // WRITE(16)
    let o = s.start(1, 0x00, t0); // TEST UNIT READY
    s.end_local(r, good(4096));
    s.end_remote(w, good(8192));
    s.end_local(o, good(0));
    let t = s.totals();
    assert_eq!((t.reads, t.writes, t.others), (1, 1, 1));
    assert_eq!((t.read_bytes, t.written_bytes), (4096, 8192));
    assert_eq!(t.in_flight, 0);
}

#[test]
fn commands_started_and_not_completed_are_in_flight() {
    let s = LunStats::new(1);
    let a = s.start(0, 0x28, Stamp::now());
    let _b = s.start(0, 0x2a, Stamp::now());
    assert_eq!(s.totals().in_flight, 2);
    s.end_local(a, good(512));
    assert_eq!(s.totals().in_flight, 1);
}

#[test]
fn errors_are_counted_by_kind_and_sense_key() {
    let s = LunStats::new(1);
    let end = |status, sense_key| End::Status {
        status,
        sense_key,
        bytes: 4096,
    };
    for e in [
        end(0x02, 0x07), // CHECK CONDITION, DATA PROTECT
        end(0x02, 0x07),
        end(0x02, 0x05), // ILLEGAL REQUEST
        end(0x18, 0),    // RESERVATION CONFLICT
        end(0x08, 0),    // BUSY
        End::Transport,
    ] {
        let st = s.start(0, 0x2a, Stamp::now());
        s.end_local(st, e);
    }
    let t = s.totals();
    assert_eq!(t.check_by_key[7], 2);
    assert_eq!(t.check_by_key[5], 1);
    assert_eq!(
        t.check_conditions(),
        vec![("illegal_request", 1), ("data_protect", 2)]
    );
    assert_eq!(
        (t.reservation_conflicts, t.busy, t.transport_failures),
        (1, 1, 1)
    );
    // Failed writes moved no data.
    assert_eq!(t.written_bytes, 0);
    assert_eq!(t.writes, 6);
}

#[test]
fn latency_goes_to_the_power_of_two_bucket_above_it() {
    let s = LunStats::new(1);
    // A command that took 3 ms: 2^11 us <= 3000 us < 2^12 us (or a bucket
    // or two more on a loaded machine).
    let st = s.start(0, 0x28, Stamp::now());
    std::thread::sleep(Duration::from_millis(3));
    s.end_local(st, good(512));
    let t = s.totals();
    let bucket = t.latency_buckets.iter().position(|&n| n == 1).unwrap();
    assert!((12..=20).contains(&bucket), "bucket {bucket}");
    assert!(t.latency_sum_us >= 3000);
    assert_eq!(t.quantile_us(0.5), Some(1 << bucket));
}

#[test]
fn a_queue_past_the_slots_counts_in_the_last_one() {
    let s = LunStats::new(1);
    let st = s.start(5, 0x28, Stamp::now());
    s.end_local(st, good(512));
    assert_eq!(s.totals().reads, 1);
}

#[test]
fn sense_key_of_fixed_and_descriptor_sense() {
    // Fixed: response code 70h, sense key in byte 2 (here 07h DATA PROTECT).
    let fixed = [0x70, 0, 0x07, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x27, 0x00];
    assert_eq!(sense_key(&fixed), 7);
    // Descriptor: response code 72h, sense key in byte 1 (05h).
    let desc = [0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0];
    assert_eq!(sense_key(&desc), 5);
    assert_eq!(sense_key(&[]), 0);
    assert_eq!(sense_key(&[0x70]), 0);
}

#[test]
fn totals_of_several_luns_add_up() {
    let a = LunStats::new(1);
    let b = LunStats::new(1);
    let st = a.start(0, 0x28, Stamp::now());
    a.end_local(st, good(100));
    let st = b.start(0, 0x28, Stamp::now());
    b.end_local(st, good(50));
    let mut t = Totals::default();
    t.add(&a.totals());
    t.add(&b.totals());
    assert_eq!((t.reads, t.read_bytes), (2, 150));
    assert_eq!(t.latency_buckets.iter().sum::<u64>(), 2);
}
