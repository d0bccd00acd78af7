#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Real QEMU as the helper's client. Inside a guest whose /dev/sda is a SCSI
# disk from our daemon, our pr-helper runs and an inner QEMU (TCG) passes
# that disk through with scsi-block and -object pr-manager-helper; the inner
# guest runs sg_persist register / reserve / read keys / read reservation /
# release, which QEMU hands to our helper. Slow (nested TCG, ~2-4 minutes),
# so it runs with one QEMU version only (NESTED_ONCE in run.sh).
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 64M)
start_daemon --socket "$WORK/s0" --lun "file=$disk"
inner=$WORK/inner.sh
cat > "$inner" <<'I'
set -e
sd=/dev/sda
sg_inq $sd | grep -q "vhost-user-scsi"
sg_persist --out --register --param-sark=0x5151 $sd
sg_persist --out --reserve --param-rk=0x5151 --prout-type=1 $sd
sg_persist --in --read-keys $sd | tee /tmp/k
grep -q 0x5151 /tmp/k
sg_persist --in --read-reservation $sd | tee /tmp/r
grep -qi "Write Exclusive" /tmp/r
sg_persist --out --release --param-rk=0x5151 --prout-type=1 $sd
echo INNER-PR-OK
I
script=$(guest_script nested <<'G'
sd=$(disk_for_lun :0:0:0)
check '[ "$sd" = /dev/sda ]'
vhost-user-scsi pr-helper -v -k /run/pr.sock -f /run/pr.pid 2>/tmp/helper.log &
i=0; while [ ! -S /run/pr.sock ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
cat > /tmp/inner-test.sh <<'EOI'
@INNER@
EOI
timeout 420 qemu-system-x86_64 -accel tcg -nodefaults -no-reboot -display none -m 256 \
    -kernel /inner/vmlinuz -initrd /inner/initrd -append "console=ttyS0 panic=-1 quiet" \
    -serial file:/tmp/inner.log -fw_cfg name=opt/test,file=/tmp/inner-test.sh \
    -object pr-manager-helper,id=pr0,path=/run/pr.sock \
    -device virtio-scsi-pci,id=scsi0 \
    -drive if=none,id=d0,file=$sd,format=raw,file.pr-manager=pr0 \
    -device scsi-block,bus=scsi0.0,drive=d0 || echo "inner QEMU exited with $?"
tr -d '\r' < /tmp/inner.log | grep -v '^$' | tail -25
check 'grep -q "INNER-PR-OK" /tmp/inner.log'
check 'grep -q "GUEST-RESULT: 0" /tmp/inner.log'
# The registration went to the real device, through the helper.
check '[ "$(grep -c "CDB \[5f" /tmp/helper.log)" -ge 3 ]'
sg_persist --in --read-keys "$sd" | tee /tmp/k
check 'grep -q 0x5151 /tmp/k'
G
)
# Put the inner test into the outer script.
python3 - "$script" "$inner" <<'PY'
import sys
outer, inner = sys.argv[1], sys.argv[2]
s = open(outer).read().replace("@INNER@", open(inner).read())
open(outer, "w").write(s)
PY
with_nested_qemu
with_daemon_binary
# shellcheck disable=SC2046
GUEST_MEM=2048 GUEST_TIMEOUT=600 boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "nested QEMU PR run failed"
stop_daemon
