#!/usr/bin/env bash
# Build a Vagrant box (libvirt provider) of Debian 12 "bookworm", amd64, with
# debootstrap, for dslab's real-VM tests.
#
# Usage: build-box.sh OUTPUT.box
#
# The result is an uncompressed tar holding metadata.json, Vagrantfile and
# box.img (qcow2), which is what `vagrant box add` expects for vagrant-libvirt.
# The disk is a normal BIOS disk: one MBR partition (ext4) with GRUB in the
# MBR, the root file system found by UUID, the NIC named eth0
# (net.ifnames=0 biosdevname=0) and brought up by ifupdown (DHCP + SLAAC).
#
# debootstrap fetches from its own default mirror; no mirror is named here.
# Needs root, debootstrap, losetup/partx (util-linux), mkfs.ext4 (e2fsprogs),
# qemu-img (qemu-utils) and python3 (to write the partition table).
#
# Environment:
#   VAGRANT_INSECURE_PUBKEY  path of Vagrant's insecure public key (default:
#                            searched in the installed vagrant package)
#   DSLAB_BOX_DISK_GB        virtual disk size in GiB (default 20)
set -euo pipefail

SUITE=bookworm
ARCH=amd64
DISK_GB=${DSLAB_BOX_DISK_GB:-20}
HOSTNAME_DEFAULT=debian12

# Packages installed on top of debootstrap's minbase variant.  Later tests run
# the Kubernetes node preparation and Docker steps inside VMs that have no
# internet, so everything those steps need is baked in here.
PACKAGES=(
  systemd-sysv udev dbus netbase procps e2fsprogs zstd
  linux-image-amd64 grub-pc
  ifupdown isc-dhcp-client
  openssh-server sudo rsync
  iproute2 iputils-ping dnsutils
  python3
  docker.io ipset ipvsadm kmod curl ca-certificates conntrack ethtool socat
  iptables ebtables tar
)

log() { printf '==> build-box: %s\n' "$*" >&2; }
die() { printf '==> build-box: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 OUTPUT.box"
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, loop devices, chroot)"
for tool in debootstrap losetup partx mkfs.ext4 qemu-img python3 chroot mount umount fstrim; do
  command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"
done

find_pubkey() {
  local candidate
  if [[ -n "${VAGRANT_INSECURE_PUBKEY:-}" ]]; then
    printf '%s\n' "$VAGRANT_INSECURE_PUBKEY"
    return 0
  fi
  for candidate in /usr/share/vagrant/keys/vagrant.pub \
                   /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
                   /var/lib/gems/*/gems/vagrant-*/keys/vagrant.pub \
                   /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub \
                   /opt/vagrant/embedded/gems/*/gems/vagrant-*/keys/vagrant.pub; do
    if [[ -f "$candidate" ]]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}
PUBKEY_FILE=$(find_pubkey) || die "Vagrant's insecure public key (keys/vagrant.pub) not found; set VAGRANT_INSECURE_PUBKEY"
[[ -s "$PUBKEY_FILE" ]] || die "empty public key file: $PUBKEY_FILE"

OUT=$(realpath -m "$1")
mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d "$(dirname "$OUT")/.build-box.XXXXXX")
RAW="$WORK/disk.raw"
MNT="$WORK/root"
LOOP=""

# Unmount everything below $WORK (deepest first), detach the loop device and,
# only when nothing is mounted there any more, remove the work directory.
cleanup() {
  local status=$? mp
  set +e
  if [[ -d "$WORK" ]]; then
    while read -r mp; do
      umount "$mp" 2>/dev/null || umount -l "$mp"
    done < <(awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r)
  fi
  if [[ -n "$LOOP" ]]; then
    partx -d "$LOOP" 2>/dev/null
    losetup -d "$LOOP"
  fi
  if awk -v w="$WORK/" 'index($2, w) == 1 {found=1} END {exit !found}' /proc/mounts; then
    log "something is still mounted under $WORK: not removing it"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT

in_chroot() {
  LC_ALL=C DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$MNT" "$@"
}

log "creating a ${DISK_GB} GiB sparse disk with one MBR partition"
truncate -s "${DISK_GB}G" "$RAW"
python3 - "$RAW" <<'PYEOF'
import os, struct, sys
path = sys.argv[1]
sectors = os.path.getsize(path) // 512
start = 2048
entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                    start, sectors - start)
with open(path, "r+b") as f:
    f.seek(440)
    f.write(os.urandom(4) + b"\0\0")   # disk signature
    f.write(entry + b"\0" * 48)        # 4 partition entries
    f.write(b"\x55\xaa")
PYEOF

LOOP=$(losetup --find --show "$RAW")
partx -a "$LOOP"
PART="${LOOP}p1"
for _ in $(seq 50); do [[ -b "$PART" ]] && break; sleep 0.1; done
[[ -b "$PART" ]] || die "partition node $PART did not appear"

ROOT_UUID=$(python3 -c 'import uuid; print(uuid.uuid4())')
mkfs.ext4 -q -F -L dslab-root -U "$ROOT_UUID" "$PART"
mkdir -p "$MNT"
mount "$PART" "$MNT"

log "debootstrap $SUITE ($ARCH, minbase)"
debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$MNT"

mount -t proc proc "$MNT/proc"
mount -t sysfs sysfs "$MNT/sys"
mount --bind /dev "$MNT/dev"
mount -t devpts devpts "$MNT/dev/pts" -o newinstance,ptmxmode=0666

# No service may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$MNT/usr/sbin/policy-rc.d"
chmod 0755 "$MNT/usr/sbin/policy-rc.d"

# GRUB is installed by hand below: keep grub-pc's postinst from asking.
in_chroot debconf-set-selections <<'EOF'
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
grub-pc grub-pc/install_devices_disks_changed multiselect
EOF

cat >"$MNT/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
EOF

log "installing: ${PACKAGES[*]}"
in_chroot apt-get update
in_chroot apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
in_chroot apt-get clean

log "configuring the system"
printf '%s\n' "$HOSTNAME_DEFAULT" >"$MNT/etc/hostname"
# No 127.0.1.1 line: the host name must resolve to the guest's real address.
cat >"$MNT/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
cat >"$MNT/etc/fstab" <<EOF
UUID=$ROOT_UUID	/	ext4	errors=remount-ro	0	1
EOF
# resolv.conf is written by dhclient at boot; drop the build host's copy.
rm -f "$MNT/etc/resolv.conf"
: >"$MNT/etc/resolv.conf"

cat >"$MNT/etc/network/interfaces" <<'EOF'
# The loopback network interface
auto lo
iface lo inet loopback

# The management NIC (net.ifnames=0 on the kernel command line makes it eth0)
auto eth0
iface eth0 inet dhcp
iface eth0 inet6 auto
	accept_ra 2

source /etc/network/interfaces.d/*
EOF
mkdir -p "$MNT/etc/network/interfaces.d"

cat >"$MNT/etc/sysctl.d/60-dslab-ipv6.conf" <<'EOF'
# IPv6 on, router advertisements accepted (even with forwarding enabled).
net.ipv6.conf.all.disable_ipv6 = 0
net.ipv6.conf.default.disable_ipv6 = 0
net.ipv6.conf.default.accept_ra = 2
net.ipv6.conf.eth0.accept_ra = 2
EOF

# The vagrant user: passwordless sudo, Vagrant's insecure key.
in_chroot useradd --create-home --shell /bin/bash --user-group vagrant
printf 'vagrant:vagrant\n' | in_chroot chpasswd
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' >"$MNT/etc/sudoers.d/vagrant"
chmod 0440 "$MNT/etc/sudoers.d/vagrant"
install -d -m 0700 "$MNT/home/vagrant/.ssh"
install -m 0600 "$PUBKEY_FILE" "$MNT/home/vagrant/.ssh/authorized_keys"
in_chroot chown -R vagrant:vagrant /home/vagrant/.ssh

# sshd: no DNS lookups, and per-VM host keys generated at first boot.  Only
# ECDSA and Ed25519: generating an RSA host key under software emulation
# (no KVM) takes ~20 s, on the path to the first `vagrant ssh`.
cat >"$MNT/etc/ssh/sshd_config.d/dslab.conf" <<'EOF'
UseDNS no
HostKey /etc/ssh/ssh_host_ecdsa_key
HostKey /etc/ssh/ssh_host_ed25519_key
EOF
rm -f "$MNT"/etc/ssh/ssh_host_*
cat >"$MNT/etc/systemd/system/dslab-ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Generate missing SSH host keys (ECDSA, Ed25519)
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for t in ecdsa ed25519; do f=/etc/ssh/ssh_host_$${t}_key; [ -e "$$f" ] || ssh-keygen -q -t "$$t" -N "" -f "$$f"; done'

[Install]
RequiredBy=ssh.service
EOF
in_chroot systemctl enable dslab-ssh-hostkeys.service

# No periodic apt runs racing the tests (the VMs have no internet anyway).
for unit in apt-daily.timer apt-daily-upgrade.timer; do
  ln -sf /dev/null "$MNT/etc/systemd/system/$unit"
done

# The vagrant user's systemd instance stays up between logins (linger): otherwise every
# ssh login waits for it to start, which takes many seconds under software emulation.
mkdir -p "$MNT/var/lib/systemd/linger"
: >"$MNT/var/lib/systemd/linger/vagrant"

# Every VM gets its own machine-id at first boot.
: >"$MNT/etc/machine-id"
rm -f "$MNT/var/lib/dbus/machine-id"

log "installing GRUB"
in_chroot grub-install --target=i386-pc --modules="part_msdos ext2" "$LOOP"
# Written by hand: update-grub in a chroot would put root=/dev/loopNp1 on the
# kernel command line (no /dev/disk/by-uuid without udev).
cat >"$MNT/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set default=0
set timeout=0
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root $ROOT_UUID
menuentry 'Debian GNU/Linux 12 (dslab test box)' {
	linux /vmlinuz root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0
	initrd /initrd.img
}
EOF
[[ -e "$MNT/vmlinuz" && -e "$MNT/initrd.img" ]] || die "kernel or initrd link missing in /"

rm -f "$MNT/usr/sbin/policy-rc.d"
rm -rf "$MNT"/var/lib/apt/lists/* "$MNT"/var/cache/apt/*.bin "$MNT"/var/log/*.log "$MNT"/tmp/* "$MNT"/root/.bash_history

umount "$MNT/dev/pts" "$MNT/dev" "$MNT/sys" "$MNT/proc"

log "zeroing free space"
if ! fstrim "$MNT" >/dev/null 2>&1; then
  dd if=/dev/zero of="$MNT/zero.fill" bs=1M status=none || true
  rm -f "$MNT/zero.fill"
fi
sync
umount "$MNT"
partx -d "$LOOP"
losetup -d "$LOOP"
LOOP=""

# Compressed: vagrant-libvirt streams the whole image into the storage pool
# on the first `vagrant up` of a session, so size is time.
log "converting to compressed qcow2"
qemu-img convert -c -O qcow2 "$RAW" "$WORK/box.img"
rm -f "$RAW"

printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$DISK_GB" >"$WORK/metadata.json"
cat >"$WORK/Vagrantfile" <<'EOF'
# Defaults of the dslab test box; a project's Vagrantfile overrides them.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF

tar -C "$WORK" -cf "$OUT.part" metadata.json Vagrantfile box.img
mv -f "$OUT.part" "$OUT"
log "box written: $OUT ($(du -h "$OUT" | cut -f1))"
