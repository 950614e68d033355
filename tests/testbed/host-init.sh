#!/usr/bin/env bash
# PID 1 of a test host: runs inside `ip netns exec NS unshare --mount --uts --pid --fork`, so
# every mount below is private to the host and vanishes with it. Builds a copy-on-write root
# (overlay over / on a tmpfs), gives it a hostname, host key, users and sshd, then becomes sshd.
# Inputs (environment): HOST_NAME HOST_IP HOST_DIR CLIENT_PUB SUDO_USER_NAME SUDO_PASSWORD HOST_SHARED_PATHS
set -euo pipefail
fs=$HOST_DIR/fs
mount -t tmpfs -o size=32g,mode=755 "k3stack-testbed-$HOST_NAME" "$fs"
mkdir "$fs/upper" "$fs/work" "$fs/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$fs/upper,workdir=$fs/work" "$fs/root"
r=$fs/root
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs -o mode=755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
# Paths of the real machine the host must see as they are (HOST_SHARED_PATHS, colon-separated),
# even under the fresh /tmp and /run above; read-only.
IFS=: read -ra shared <<<"${HOST_SHARED_PATHS:-}"
for path in "${shared[@]}"; do
  if [ -n "$path" ] && [ -d "$path" ]; then
    mkdir -p "$r$path"
    mount --rbind "$path" "$r$path"
    mount -o remount,bind,ro "$r$path" 2>/dev/null || true
  fi
done
hostname "$HOST_NAME"
echo "$HOST_NAME" >"$r/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n%s %s\n' "$HOST_NAME" "$HOST_IP" "$HOST_NAME" >"$r/etc/hosts"

rm -f "$r"/etc/ssh/ssh_host_*
install -m 600 "$HOST_DIR/ssh_host_ed25519_key" "$r/etc/ssh/ssh_host_ed25519_key"
install -m 644 "$HOST_DIR/ssh_host_ed25519_key.pub" "$r/etc/ssh/ssh_host_ed25519_key.pub"
install -d -m 700 "$r/root/.ssh"
install -m 600 "$CLIENT_PUB" "$r/root/.ssh/authorized_keys"

# A non-root user whose sudo asks for a password (no NOPASSWD anywhere).
chroot "$r" useradd --create-home --shell /bin/bash --groups sudo "$SUDO_USER_NAME"
printf '%s:%s\n' "$SUDO_USER_NAME" "$SUDO_PASSWORD" | chroot "$r" chpasswd
install -d -m 700 -o "$(chroot "$r" id -u "$SUDO_USER_NAME")" -g "$(chroot "$r" id -g "$SUDO_USER_NAME")" \
  "$r/home/$SUDO_USER_NAME/.ssh"
install -m 600 -o "$(chroot "$r" id -u "$SUDO_USER_NAME")" "$CLIENT_PUB" "$r/home/$SUDO_USER_NAME/.ssh/authorized_keys"

cat >"$r/etc/ssh/sshd_config.testbed" <<CONF
ListenAddress $HOST_IP
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile /run/sshd.pid
MaxStartups 100
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
mkdir -p "$r/run/sshd"
exec chroot "$r" /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config.testbed
