#!/usr/bin/env bash
# Install what building and testing weft needs on a Debian 12 machine. Idempotent: it changes nothing when
# everything is already there, and it runs `apt-get update` at most once, only when a package is missing.
#
#   scripts/setup.sh            (as root to install; as a user it only reports what is missing)
set -euo pipefail

# Tools of the namespace lab and the tests (iproute2, nftables, iperf3, tshark, tcpdump, ethtool, socat, netcat,
# ping, procps, dig for the DNS tests, jq for the scripts) and what the AF_XDP underlay's build needs: clang (weft's
# XDP program, build.rs; libxdp's BPF objects), m4, binutils (ld, objcopy, ar) for libxdp-sys, make, pkg-config,
# libelf-dev and zlib1g-dev for the libbpf that libbpf-sys builds from its vendored source; llvm for inspecting BPF
# objects (llvm-objdump).
PACKAGES=(
    iproute2 nftables iperf3 tshark tcpdump ethtool
    clang llvm m4 binutils make libelf-dev zlib1g-dev pkg-config
    socat netcat-openbsd procps iputils-ping bind9-dnsutils jq
)

say() { printf 'setup: %s\n' "$*"; }

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    say "all ${#PACKAGES[@]} Debian packages are installed"
elif [[ $(id -u) -ne 0 ]]; then
    say "missing Debian packages: ${missing[*]}" >&2
    say "run this script as root to install them" >&2
    exit 1
else
    export DEBIAN_FRONTEND=noninteractive
    # tshark pulls in wireshark-common, whose setuid question would otherwise stop a non-interactive install.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
    say "apt-get update"
    apt-get update -q
    say "installing: ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    say "installed: ${missing[*]}"
fi

if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        if rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
            say "rust component ${component} is installed"
        else
            say "rustup component add ${component}"
            rustup component add "${component}"
        fi
    done
else
    for tool in rustfmt cargo-clippy; do
        command -v "$tool" >/dev/null 2>&1 || { say "no rustup and no ${tool}: install the Rust toolchain" >&2; exit 1; }
    done
    say "no rustup; rustfmt and clippy are on PATH"
fi
