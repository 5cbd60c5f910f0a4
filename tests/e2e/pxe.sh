#!/usr/bin/env bash
# tests/e2e/pxe.sh — a diskless QEMU machine PXE-boots through image-cache, as in a metal-stack partition.
#
# One network namespace holds a bridge with: dnsmasq as DHCP server (10.99.0.1) handing out image-cache as DNS
# server and an iPXE script URL by name; a second dnsmasq as "the internet's" DNS (10.99.0.1:53, boot.test →
# the origin); nginx as the HTTPS origin (10.99.0.3, certificate from a CA made here) holding the iPXE script,
# a real Debian kernel (extracted from linux-image-amd64, not installed), an initrd built here with busybox,
# and an OS image with its .md5; and image-cache (10.99.0.2) intercepting boot.test. QEMU's iPXE ROM does
# DHCP, resolves boot.test through image-cache's DNS and loads kernel and initrd through its HTTP cache; the
# initrd downloads the OS image through the cache, checks the md5 against the sidecar and prints a marker on
# the serial console, then powers off. Checks: the marker, misses and intercepted queries after the first
# boot, hits after a second machine boots, the origin asked once per file.
# KVM is used when a probe boot succeeds under it, TCG otherwise (PXE_ACCEL=tcg|kvm forces one).
# Needs root. Installs qemu-system-x86, ipxe-qemu, busybox-static, cpio, dnsmasq-base, nginx-light if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/lib.sh
# The ROM and a static busybox are files, not commands: checked here, installed with the rest.
[ -e /usr/lib/ipxe/qemu/efi-virtio.rom ] || E2E_EXTRA_PACKAGES+=" ipxe-qemu"
ldd /bin/busybox 2>&1 | grep -q "not a dynamic" && /bin/busybox --list | grep -qx udhcpc ||
  E2E_EXTRA_PACKAGES+=" busybox-static"
e2e_start pxe qemu-system-x86_64:qemu-system-x86 cpio:cpio dnsmasq:dnsmasq-base nginx:nginx-light \
  openssl:openssl curl:curl
NS=ic-e2e-pxe
trap e2e_cleanup EXIT
trap 'exit 143' TERM INT
in_ns() { ip netns exec $NS "$@"; }
metric() { in_ns curl -s http://10.99.0.2/metrics | awk -v k="$1" '$1 == k {print $2}'; }

# --- a real kernel, extracted from Debian's package (cached between runs) ---------------------------
source tests/debian-newer.sh
KERNEL=$(debian_kernel) || { echo "cannot download Debian's kernel package"; exit 1; }
VMLINUZ=$(ls "$KERNEL"/boot/vmlinuz-*)
MODDIR=$(ls -d "$KERNEL"/lib/modules/*)

# --- the initrd: busybox, the virtio-net modules, an init that checks the OS image ---------------------
R=$W/initrd
mkdir -p "$R"/bin "$R"/lib/modules "$R"/proc "$R"/sys "$R"/dev "$R"/etc "$R"/usr/share/udhcpc
cp /bin/busybox "$R/bin/busybox"
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net"
for m in $MODS; do
  f=$(find "$MODDIR/kernel" -name "$m.ko*" | head -1)
  [ -n "$f" ] || { echo "module $m not found in $MODDIR"; exit 1; }
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$R/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$R/lib/modules/$m.ko" ;;
    *) cp "$f" "$R/lib/modules/$m.ko" ;;
  esac
done
cat >"$R/usr/share/udhcpc/default.script" <<'SH'
#!/bin/busybox sh
case "$1" in
  bound|renew)
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for d in $dns; do echo "nameserver $d"; done >/etc/resolv.conf ;;
esac
SH
cat >"$R/init" <<SH
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
case " \$(cat /proc/cmdline) " in *" probe "*) echo IMAGE-CACHE-PROBE-OK; poweroff -f ;; esac
for m in $MODS; do insmod /lib/modules/\$m.ko; done
IMG=; for w in \$(cat /proc/cmdline); do case \$w in img=*) IMG=\${w#img=};; esac; done
ip link set lo up; n=0; while ! ip link show eth0 >/dev/null 2>&1 && [ \$n -lt 100 ]; do sleep 0.1; n=\$((n+1)); done
ip link set eth0 up
udhcpc -i eth0 -q -n -t 10 -T 1 -s /usr/share/udhcpc/default.script
want=\$(wget -q -O - "\$IMG.md5" | cut -d' ' -f1)
got=\$(wget -q -O - "\$IMG" | md5sum | cut -d' ' -f1)
if [ -n "\$want" ] && [ "\$want" = "\$got" ]; then echo "IMAGE-CACHE-PXE-OK md5=\$got"; else echo "IMAGE-CACHE-PXE-FAIL want=\$want got=\$got"; fi
poweroff -f
SH
chmod 755 "$R/init" "$R/usr/share/udhcpc/default.script"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 >"$W/initrd.gz")

# --- the origin's files and certificate ---------------------------------------------------------------
mkdir -p "$W/www" "$W/certs"
cp "$VMLINUZ" "$W/www/vmlinuz"
cp "$W/initrd.gz" "$W/www/initrd.gz"
head -c 16777216 /dev/urandom >"$W/www/os.img"
md5sum "$W/www/os.img" | cut -d' ' -f1 >"$W/www/os.img.md5"
cat >"$W/www/boot.ipxe" <<'IPXE'
#!ipxe
kernel http://boot.test/vmlinuz console=ttyS0 quiet panic=-1 img=http://boot.test/os.img
initrd http://boot.test/initrd.gz
boot
IPXE
chmod -R a+rX "$W/www"
e2e_cert "$W/certs" origin boot.test

# --- the namespace --------------------------------------------------------------------------------------
e2e_netns $NS
ip -n $NS link add br0 type bridge
ip -n $NS link set br0 type bridge forward_delay 0 stp_state 0
for a in 10.99.0.1 10.99.0.2 10.99.0.3; do ip -n $NS addr add $a/24 dev br0; done
ip -n $NS link set br0 up
for t in tap0 tap1 tap2; do
  ip -n $NS tuntap add dev $t mode tap; ip -n $NS link set $t master br0; ip -n $NS link set $t up
done

ip netns exec $NS dnsmasq --keep-in-foreground --pid-file= --port=53 --listen-address=10.99.0.1 \
  --bind-interfaces --no-resolv --no-hosts --address=/boot.test/10.99.0.3 --log-facility="$W/internet-dns.log" &
PID[internet-dns]=$!
cat >"$W/dhcp.conf" <<CONF
port=0
interface=br0
bind-interfaces
except-interface=lo
dhcp-range=10.99.0.100,10.99.0.199,255.255.255.0,10m
dhcp-option=option:dns-server,10.99.0.2
dhcp-match=set:ipxe,175
dhcp-boot=tag:ipxe,http://boot.test/boot.ipxe
dhcp-leasefile=$W/dhcp.leases
pid-file=
log-dhcp
CONF
ip netns exec $NS dnsmasq --keep-in-foreground --conf-file="$W/dhcp.conf" --log-facility="$W/dhcp.log" &
PID[dhcp]=$!

e2e_nginx $NS "server {
    listen 10.99.0.3:443 ssl;
    server_name boot.test;
    ssl_certificate $W/certs/origin.pem;
    ssl_certificate_key $W/certs/origin.key;
    root $W/www;
  }" "$W/origin-access.log"

e2e_node_config "$W/ic" 10.99.0.2 "" <<TOML
[http]
listen = ["10.99.0.2:80"]
[dns]
enabled = true
listen = ["10.99.0.2:53"]
upstreams = ["10.99.0.1:53"]
allow = ["10.99.0.0/24", "127.0.0.0/8"]
[passthrough]
enabled = false
[[domains]]
name = "boot.test"
origin = "https://boot.test"
[upstream]
ca_file = "$W/certs/ca.pem"
TOML
ip netns exec $NS "$BIN" serve --config "$W/ic/config.toml" >"$W/ic/log" 2>&1 &
PID[cache]=$!
for _ in $(seq 100); do in_ns curl -sf http://10.99.0.2/health >/dev/null && break; sleep 0.1; done
in_ns curl -sf --cacert "$W/certs/ca.pem" --resolve boot.test:443:10.99.0.3 https://boot.test/os.img.md5 >/dev/null ||
  { echo "origin not answering"; cat "$W/nginx-error.log"; exit 1; }

# --- KVM or TCG -----------------------------------------------------------------------------------------
ACCEL=${PXE_ACCEL:-}
if [ -z "$ACCEL" ]; then
  ACCEL=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    timeout 20 qemu-system-x86_64 -accel kvm -cpu host,-arch-capabilities -m 256 -display none -nodefaults \
      -no-reboot -monitor none -vga none -serial file:"$W/probe.serial" -kernel "$VMLINUZ" -initrd "$W/initrd.gz" \
      -append "console=ttyS0 quiet probe" </dev/null >/dev/null 2>&1 || true
    grep -q IMAGE-CACHE-PROBE-OK "$W/probe.serial" 2>/dev/null && ACCEL=kvm
  fi
fi
CPU=(); [ "$ACCEL" = kvm ] && CPU=(-cpu "host,-arch-capabilities")
echo "QEMU accelerator: $ACCEL"

boot() { # boot N: machine N on tapN; returns when QEMU exits (guest powered off) or after 300 s
  local n=$1 t0=$SECONDS
  ip netns exec $NS timeout 300 qemu-system-x86_64 -accel "$ACCEL" "${CPU[@]}" -m 512 -smp 1 \
    -display none -nodefaults -no-reboot -monitor none -vga none -serial file:"$W/vm$n.serial" \
    -netdev tap,id=n0,ifname=tap$n,script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:99:00:0$n -boot n </dev/null >"$W/qemu$n.log" 2>&1 &
  PID[qemu$n]=$!
  wait "${PID[qemu$n]}" || true
  unset "PID[qemu$n]"
  if grep -q IMAGE-CACHE-PXE-OK "$W/vm$n.serial"; then
    pass "machine $n PXE-booted through image-cache and verified the OS image ($((SECONDS - t0)) s, $ACCEL): $(grep -o 'md5=[0-9a-f]*' "$W/vm$n.serial")"
  else
    fail "machine $n: no marker on the serial console"
    tail -5 "$W/vm$n.serial" "$W/dhcp.log" "$W/ic/log" 2>/dev/null || true
  fi
}

boot 1
miss=$(metric 'image_cache_requests_total{kind="file",result="miss"}')
icpt=$(metric 'image_cache_dns_queries_total{result="intercepted"}')
if [ "${miss:-0}" -ge 4 ] 2>/dev/null && [ "${icpt:-0}" -ge 1 ] 2>/dev/null; then
  pass "first boot: $miss misses filled from the origin, $icpt intercepted DNS answers"
else
  fail "first boot metrics: misses '${miss:-}', intercepted '${icpt:-}'"
fi
hits_before=$(metric 'image_cache_requests_total{kind="file",result="hit"}')

boot 2
hits=$(metric 'image_cache_requests_total{kind="file",result="hit"}')
if [ $(( ${hits:-0} - ${hits_before:-0} )) -ge 4 ]; then
  pass "second machine served from the cache: $(( ${hits:-0} - ${hits_before:-0} )) hits"
else
  fail "second boot hits: before '${hits_before:-}', after '${hits:-}'"
fi
for f in boot.ipxe vmlinuz initrd.gz os.img; do
  n=$(grep -c "\"GET /$f " "$W/origin-access.log" || true)
  if [ "$n" = 1 ]; then pass "origin asked once for $f over two boots"; else fail "origin asked $n times for $f"; fi
done

e2e_done PXE
