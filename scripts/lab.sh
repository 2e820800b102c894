#!/usr/bin/env bash
# A multi-host lab made of network namespaces, for weft's integration tests and for trying weft by hand.
#
#   lab.sh up NAME --hosts N [--containers M] [--nets "blue red"] [--mtu 1500] [--cmtu MTU]
#   lab.sh down NAME      remove every namespace of the lab (idempotent; also after a half-finished `up`)
#   lab.sh list NAME      print the lab's namespaces and their addresses
#
# Topology of `up` (all names below live inside the lab's own namespaces; nothing is created in the caller's):
#
#   NAME-ul        the underlay switch: bridge br0, with a port p<i> for each host
#   NAME-h<i>      host i (1-based): ul0 = 198.18.0.<i>/24 (MAC 02:18:00:00:00:<i>), MTU --mtu (default 1500);
#                  for each net n (0-based, in --nets order; default "blue"): a bridge br-<net>, no address,
#                  with a port v<n>c<c> for each container
#   NAME-h<i>-<net>-c<c>
#                  container c (1-based) of host i on that net: eth0 with
#                    IPv4 198.19.<n>.<i*10+c>/24
#                    IPv6 2001:db8:19:<n>::<i*10+c>/64 (the decimal digits written as they are, so host 1
#                         container 2 is 2001:db8:19:0::12)
#                    MAC  02:19:<n>:00:<i>:<c> (each as two hex digits)
#                    MTU  --cmtu (default: --mtu - 50, room for VXLAN's 50-byte overhead)
#
# Without weft, containers on the same host and net reach each other through br-<net>, and nothing crosses hosts.
# IPv6 duplicate address detection, router solicitations and router advertisements are off in every namespace,
# and the bridges do no multicast snooping (so neighbour discovery is flooded to every port, weft's TAP included).
#
# NAME is 1-8 characters of [a-z0-9]; every namespace of the lab starts with "NAME-", which is what `down` removes.
# Net names are 1-10 characters of [a-z0-9-] (the bridge name br-<net> must fit in 15 characters).
# Limits: 1-200 hosts; with containers, 0-9 per host and net, and i*10+c <= 254 (so at most 25 hosts); 256 nets.
set -euo pipefail

PROG=lab.sh

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 2
}

validate_name() {
    [[ $1 =~ ^[a-z0-9]{1,8}$ ]] || die "lab name '$1' must be 1-8 characters of [a-z0-9]"
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it creates network namespaces)"
}

# The lab's namespaces, containers before hosts before the switch (the order `down` removes them in).
lab_namespaces() {
    ip netns list 2>/dev/null | awk '{ print $1 }' | grep -E "^$1-" | sort -rV || true
}

# PIDs of the processes still running inside the lab's namespaces.
lab_pids() {
    local ns
    for ns in $(lab_namespaces "$1"); do
        ip netns pids "$ns" 2>/dev/null || true
    done
}

lab_down() {
    local name=$1 pids ns tries
    # Processes inside would keep a namespace alive after `ip netns del`: end them by PID, politely first.
    pids=$(lab_pids "$name")
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        for ((tries = 0; tries < 50; tries++)); do # up to 5 s
            pids=$(lab_pids "$name")
            [[ -z $pids ]] && break
            sleep 0.1
        done
        if [[ -n $pids ]]; then
            printf '%s: killing processes that ignored SIGTERM: %s\n' "$PROG" "${pids//$'\n'/ }" >&2
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
    fi
    # Deleting a namespace destroys its interfaces, and with them the veth peers in the other namespaces.
    for ns in $(lab_namespaces "$name"); do
        ip netns del "$ns" 2>/dev/null || true
    done
    local left
    left=$(lab_namespaces "$name")
    [[ -z $left ]] || { printf '%s: could not delete: %s\n' "$PROG" "${left//$'\n'/ }" >&2; return 1; }
}

# A new namespace with lo up and no IPv6 autoconfiguration delays.
new_ns() {
    ip netns add "$1"
    ip netns exec "$1" sysctl -qw \
        net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
        net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
        net.ipv6.conf.all.router_solicitations=0 net.ipv6.conf.default.router_solicitations=0
    ip -n "$1" link set lo up
}

new_bridge() { # ns name [mtu]
    ip -n "$1" link add "$2" ${3:+mtu "$3"} type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    ip -n "$1" link set "$2" up
}

# The EXIT trap of a failed (or interrupted) `up`: remove the half-built lab, keep the exit status.
up_failed() {
    local rc=$?
    trap - EXIT INT TERM
    printf '%s: up failed; removing lab %s\n' "$PROG" "$UP_NAME" >&2
    lab_down "$UP_NAME" || true
    exit "$rc"
}

lab_up() {
    local name=$1
    shift
    local hosts="" containers=1 nets="blue" mtu=1500 cmtu=""
    while (($#)); do
        case $1 in
            --hosts) hosts=${2-}; shift 2 || usage ;;
            --containers) containers=${2-}; shift 2 || usage ;;
            --nets) nets=${2-}; shift 2 || usage ;;
            --mtu) mtu=${2-}; shift 2 || usage ;;
            --cmtu) cmtu=${2-}; shift 2 || usage ;;
            *) die "unknown option '$1'" ;;
        esac
    done
    [[ -n $cmtu ]] || cmtu=$((mtu - 50))

    # Validate everything before touching the system.
    [[ $hosts =~ ^[0-9]+$ ]] || die "--hosts N is required (a number)"
    ((hosts >= 1 && hosts <= 200)) || die "--hosts must be 1-200, not $hosts"
    [[ $containers =~ ^[0-9]+$ ]] || die "--containers must be a number"
    if ((containers > 0)); then
        ((containers <= 9)) || die "--containers must be 0-9, not $containers"
        ((hosts * 10 + containers <= 254)) ||
            die "container addresses are 198.19.<net>.<host*10+container>: $hosts hosts x $containers containers do not fit"
    fi
    if ! [[ $mtu =~ ^[0-9]+$ ]] || ((mtu < 1280 || mtu > 65535)); then
        die "--mtu must be 1280-65535"
    fi
    if ! [[ $cmtu =~ ^[0-9]+$ ]] || ((cmtu < 1280 || cmtu > 65535)); then
        die "--cmtu (default: --mtu - 50) must be 1280-65535, as IPv6 needs 1280"
    fi
    local -a net_list
    read -r -a net_list <<<"$nets"
    ((${#net_list[@]} >= 1 && ${#net_list[@]} <= 256)) || die "--nets must name 1-256 nets"
    local net seen=" "
    for net in "${net_list[@]}"; do
        [[ $net =~ ^[a-z0-9-]{1,10}$ ]] || die "net name '$net' must be 1-10 characters of [a-z0-9-]"
        [[ $seen != *" $net "* ]] || die "net '$net' is named twice"
        seen+="$net "
    done

    require_root
    local existing
    existing=$(lab_namespaces "$name")
    [[ -z $existing ]] || die "lab '$name' exists (${existing//$'\n'/ }); run: $0 down $name"

    # From here on, any failure (or Ctrl-C) removes what was created.
    UP_NAME=$name
    trap up_failed EXIT
    trap 'exit 130' INT TERM

    local ul="$name-ul" i n c h cns port mac octet
    new_ns "$ul"
    new_bridge "$ul" br0 "$mtu"
    for ((i = 1; i <= hosts; i++)); do
        h="$name-h$i"
        new_ns "$h"
        ip -n "$ul" link add "p$i" mtu "$mtu" type veth \
            peer name ul0 address "$(printf '02:18:00:00:00:%02x' "$i")" mtu "$mtu" netns "$h"
        ip -n "$ul" link set "p$i" master br0 up
        ip -n "$h" addr add "198.18.0.$i/24" dev ul0
        ip -n "$h" link set ul0 up
        for ((n = 0; n < ${#net_list[@]}; n++)); do
            net=${net_list[n]}
            new_bridge "$h" "br-$net"
            for ((c = 1; c <= containers; c++)); do
                cns="$h-$net-c$c"
                port="v${n}c$c"
                octet=$((i * 10 + c))
                mac=$(printf '02:19:%02x:00:%02x:%02x' "$n" "$i" "$c")
                new_ns "$cns"
                ip -n "$h" link add "$port" mtu "$cmtu" type veth \
                    peer name eth0 address "$mac" mtu "$cmtu" netns "$cns"
                ip -n "$h" link set "$port" master "br-$net" up
                ip -n "$cns" addr add "198.19.$n.$octet/24" dev eth0
                ip -n "$cns" addr add "2001:db8:19:$n::$octet/64" dev eth0 nodad
                ip -n "$cns" link set eth0 up
            done
        done
    done
    trap - EXIT INT TERM

    printf 'lab %s up: %d hosts 198.18.0.1-%d on %s (mtu %d); nets %s (198.19.0-%d.0/24); %d containers per host and net (mtu %d)\n' \
        "$name" "$hosts" "$hosts" "$ul" "$mtu" "${net_list[*]}" $((${#net_list[@]} - 1)) "$containers" "$cmtu"
}

lab_list() {
    local ns dev
    for ns in $(lab_namespaces "$1" | sort -V); do
        case $ns in
            *-ul) dev=br0 ;;
            *-c[0-9]*) dev=eth0 ;;
            *) dev=ul0 ;;
        esac
        printf '%-24s %s\n' "$ns" "$(ip -n "$ns" -brief addr show dev "$dev" 2>/dev/null | awk '{ $2 = ""; print }')"
    done
}

(($# >= 2)) || usage
cmd=$1
name=$2
shift 2
validate_name "$name"
case $cmd in
    up) lab_up "$name" "$@" ;;
    down)
        (($# == 0)) || usage
        require_root
        lab_down "$name"
        ;;
    list)
        (($# == 0)) || usage
        lab_list "$name"
        ;;
    *) usage ;;
esac
