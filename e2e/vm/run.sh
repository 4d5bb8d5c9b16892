#!/usr/bin/env bash
# Runs weft's end-to-end tests inside a QEMU virtual machine that boots
# Debian's stock cloud kernel (linux-image-cloud-amd64), for what this
# machine's kernel cannot do (IP-in-IP) and to show weft works on a stock
# distribution kernel.
#
#   e2e/vm/run.sh [TEST-REGEX]      default: the ipip tests and the vxlan mesh
#   WEFT_VM_BENCH=1 e2e/vm/run.sh    the ipip data-path benchmark instead
#                                   (go run ./bench -vm-ipip, with iperf3)
#
#   host ── qemu-system-x86_64 -accel tcg ── Debian cloud kernel
#                                             └── initramfs: busybox, iproute2, ping, nft,
#                                                 bin/* (static), e2e.test, net modules
#                                                 /init loads tunnel4, ip_tunnel, ipip, ...
#                                                 and runs e2e.test -test.run TEST-REGEX
#
# The VM's console is printed as it runs; the last line it prints is
# "WEFT-VM-RESULT rc=N", and this script exits with N (1 if there is none).
# Needs: qemu-system-x86, busybox-static, cpio, iproute2, iputils-ping,
# nftables (and iperf3 for the benchmark), and apt access to Debian's archive (the kernel package is
# fetched with apt-get download and cached in $WEFT_VM_CACHE).
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
run=${1:-'^(TestIPIP|TestPodsReachEachOther)$'}
cache=${WEFT_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-vm}
timeout=${WEFT_VM_TIMEOUT:-900}
mkdir -p "$cache"

# 1. The kernel: the package the cloud metapackage depends on.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [ -z "$pkg" ]; then
	echo "run.sh: apt knows no linux-image-cloud-amd64; run apt-get update" >&2
	exit 1
fi
kdir="$cache/$pkg"
if [ ! -d "$kdir/boot" ]; then
	echo "run.sh: fetching $pkg"
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) || { echo "run.sh: apt-get download $pkg failed" >&2; exit 1; }
	rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
	dpkg-deb -x "$tmp"/*.deb "$kdir.tmp"
	rm -rf "$tmp" "$kdir" && mv "$kdir.tmp" "$kdir"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-*)
kver=$(ls "$kdir/lib/modules")

# 2. The initramfs.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,root,weft/bin,lib/modules}
cp /usr/bin/busybox "$root/bin/busybox"
# Dynamically linked tools the tests call, with their libraries.
tools="ip bridge nft ping tc"
[ "${WEFT_VM_BENCH:-}" = 1 ] && tools="$tools iperf3"
for tool in $tools; do
	path=$(command -v "$tool") || { echo "run.sh: $tool is not installed" >&2; exit 1; }
	cp "$path" "$root/usr/sbin/$tool"
	ldd "$path" | awk '/=>/ {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r lib; do
		[ -n "$lib" ] && [ -f "$lib" ] && mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"
	done
done
mkdir -p "$root/lib64" && cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"

# weft's binaries (static) and the e2e test binary.
(cd "$top" && make -s build >/dev/null)
# (Not the Kubernetes control plane of make kube-bins: no VM test needs it.)
for f in "$top"/bin/*; do
	case "$(basename "$f")" in kube-*|*.txt) ;; *) cp "$f" "$root/weft/bin/" ;; esac
done
if [ "${WEFT_VM_BENCH:-}" = 1 ]; then
	(cd "$top" && CGO_ENABLED=0 go build -o "$root/weft/bench" ./bench/)
	printf '%s\n' './bench -vm-ipip -bin /weft/bin' > "$root/weft/cmd.sh"
else
	(cd "$top" && CGO_ENABLED=0 go test -c -o "$root/weft/e2e.test" ./e2e/)
	printf '%s\n' "./e2e.test -test.v -test.count=1 -test.timeout=14m -test.run '$run'" > "$root/weft/cmd.sh"
fi

# Network modules and their dependency lists.
mods="$kdir/lib/modules/$kver"
mkdir -p "$root/lib/modules/$kver/kernel"
cp "$mods"/modules.* "$root/lib/modules/$kver/"
for d in net drivers/net lib crypto; do
	[ -d "$mods/kernel/$d" ] && mkdir -p "$root/lib/modules/$kver/kernel/$(dirname "$d")" && cp -r "$mods/kernel/$d" "$root/lib/modules/$kver/kernel/$d"
done

cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=true WEFT_BIN_DIR=/weft/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /dev/pts
ip link set lo up
depmod
for m in veth bridge vxlan tunnel4 ip_tunnel ipip nf_tables nft_chain_nat nft_masq nf_nat nf_conntrack; do
	modprobe "$m" || echo "init: cannot load $m"
done
echo "init: kernel $(uname -r), modules loaded: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
cd /weft
sh /weft/cmd.sh
rc=$?
echo "WEFT-VM-RESULT rc=$rc"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) > "$work/initrd"
echo "run.sh: initramfs $(du -h "$work/initrd" | cut -f1), kernel $kver, running: $(cat "$root/weft/cmd.sh")"

# 3. Boot it.
log="$work/console.log"
set +e
timeout "$timeout" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 -nographic -no-reboot \
	-kernel "$vmlinuz" -initrd "$work/initrd" \
	-append "console=ttyS0 panic=-1 quiet random.trust_cpu=on" </dev/null 2>&1 | tee "$log"
set -e
rc=$(sed -n 's/.*WEFT-VM-RESULT rc=\([0-9]*\).*/\1/p' "$log" | tail -1)
if [ -z "$rc" ]; then
	echo "run.sh: the VM printed no result (crash or timeout after ${timeout}s)" >&2
	exit 1
fi
echo "run.sh: tests in the VM exited with $rc"
exit "$rc"
