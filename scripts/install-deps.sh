#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and run dropwatch.
# Idempotent: installs nothing when everything is present.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have clang || need+=(clang)
have llvm-strip || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
ldconfig -p 2>/dev/null | grep -q 'libbpf.so.1 ' || need+=(libbpf1)
have bpftool || need+=(bpftool)
have ip || need+=(iproute2)
have nft || need+=(nftables)
have iptables || need+=(iptables)
have tcpdump || need+=(tcpdump)
have ethtool || need+=(ethtool)
have ping || need+=(iputils-ping)
have promtool || need+=(prometheus)
have prometheus || need+=(prometheus)                # the fleet test runs a real server
have tmux || need+=(tmux)                            # `dropwatch top` is tested in a tmux pseudo-terminal
have systemd-analyze || need+=(systemd)              # `systemd-analyze verify` of deploy/systemd
have setpriv || need+=(util-linux)                   # runs the daemon with the unit's capability set
[ -x /usr/bin/chromium ] || need+=(chromium)         # the dashboard tests (Playwright drives it; no browser download)
have gcc || need+=(gcc)
have make || need+=(make)
have bpftrace || need+=(bpftrace)                    # bench/drop_cost.py: the peer an SRE reaches for
have taskset || need+=(util-linux)                  # bench/drop_cost.py pins the flood sender
have nstat || need+=(iproute2)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
[ -f /usr/include/linux/bpf.h ] || need+=(linux-libc-dev)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! have apt-get; then
  echo "install-deps: missing: ${need[*]} (install them with your package manager, as root)" >&2
  exit 1
fi
echo "install-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
