#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Inside a guest (where our disks are real SCSI devices), the same sequence
# of PERSISTENT RESERVE commands goes through Debian's qemu-pr-helper to one
# disk and through ours to a twin disk (fresh state each), with QEMU's side
# of the protocol (vhost-user-scsi pr-client). Every reply (status, size,
# 96 sense bytes, payload) must be identical, byte for byte.
. "$(dirname "$0")/../lib.sh"

d0=$(make_disk d0.img 32M)
d1=$(make_disk d1.img 32M)
start_daemon --socket "$WORK/s0" --lun "file=$d0" --lun "file=$d1"
script=$(guest_script compare <<'G'
q=$(disk_for_lun :0:0:0); v=$(disk_for_lun :0:0:1)
check '[ -x /bin/vhost-user-scsi ]'
qemu-pr-helper -k /tmp/q.sock -f /tmp/q.pid &
vhost-user-scsi pr-helper -k /tmp/v.sock -f /tmp/v.pid &
i=0; while { [ ! -S /tmp/q.sock ] || [ ! -S /tmp/v.sock ]; } && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
sleep 0.3
# Each step: CDB, parameter list, extra pr-client options.
K=0000000000abc123
Z=0000000000000000
steps="
5e000000000000010000||read keys, empty
5e020000000000000800||report capabilities
5f000000000000001800|${Z}${K}00000000000000000000|register abc123
5f000000000000001800|00000000000000010000000000000002000000000000000000|register with wrong key
5f010300000000001800|${K}${Z}00000000000000000000|reserve exclusive access
5e010000000000010000||read reservation
5e030000000000020000||read full status
5e000000000000000800||read keys, 8-byte allocation
5f020100000000001800|${K}${Z}00000000000000000000|release with the wrong type
5f020300000000001800|${K}${Z}00000000000000000000|release
5f000000000000001400|${Z}${K}00000000|parameter list of 20 bytes
5f011300000000001800|${K}${Z}00000000000000000000|reserve with element scope
5f000000000000001800|${K}${Z}00000000000000000000|register on a read-only fd|--read-only
5e050000000000010000||PR IN service action 5
5f030000000000001800|${K}${Z}00000000000000000000|clear
5e000000000000010000||read keys after clear
"
echo "$steps" | while IFS='|' read -r cdb data what opt; do
    [ -n "$cdb" ] || continue
    d=""; [ -n "$data" ] && d="--data $data"
    rq=$(vhost-user-scsi pr-client --socket /tmp/q.sock --device "$q" --cdb "$cdb" $d $opt 2>&1 || true)
    rv=$(vhost-user-scsi pr-client --socket /tmp/v.sock --device "$v" --cdb "$cdb" $d $opt 2>&1 || true)
    if [ "$rq" = "$rv" ]; then
        echo "same: $what: ${rv%% *}"
    else
        echo "DIFFERENT: $what"; echo "  qemu-pr-helper: $rq"; echo "  ours:           $rv"
        echo fail >> /tmp/failed
    fi
done
check '[ ! -e /tmp/failed ]'
G
)
# shellcheck disable=SC2046
with_daemon_binary
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "replies differ"
stop_daemon
