// SPDX-License-Identifier: Apache-2.0
//
// weft's XDP program: hands weft's own underlay traffic to its AF_XDP sockets and everything else to the kernel.
//
// A frame goes to the AF_XDP socket of the queue it arrived on (weft_xsks[rx_queue_index]) exactly when it is
//   Ethernet (no VLAN tag) | IPv4 without options or fragmentation, or IPv6 without extension headers |
//   UDP | destination = the underlay address and port vxlan_port or esp_port (from weft_config).
// ARP, neighbour discovery, the QUIC control plane, SSH, fragments and anything else pass to the kernel, and so
// does everything while weft_config is still empty or a queue has no socket (bpf_redirect_map's XDP_PASS default).
//
// Self-contained on purpose: no libbpf or kernel headers, so `clang -target bpf` is all build.rs needs. The build
// passes -g, which gives the BTF that libbpf needs for the .maps section.

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

// From include/uapi/linux/bpf.h.
enum xdp_action { XDP_ABORTED = 0, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT };
enum { BPF_MAP_TYPE_ARRAY = 2, BPF_MAP_TYPE_XSKMAP = 17 };
struct xdp_md {
    __u32 data;
    __u32 data_end;
    __u32 data_meta;
    __u32 ingress_ifindex;
    __u32 rx_queue_index;
    __u32 egress_ifindex;
};
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define be16(x) __builtin_bswap16(x)
#else
#define be16(x) (x)
#endif

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define MAX_QUEUES 256

// Written by weft (src/io/xdp/program.rs) before the program is attached. Addresses and ports in network order.
struct weft_config {
    __u32 ipv4;          // the underlay address when it is IPv4, else 0
    __u8 ipv6[16];       // the underlay address when it is IPv6, else zeros
    __u16 vxlan_port;
    __u16 esp_port;
    __u32 family;        // 4 or 6; 0 (unset) passes everything
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct weft_config);
} weft_config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, MAX_QUEUES);
    __type(key, __u32);
    __type(value, __u32);
} weft_xsks SEC(".maps");

struct ethhdr {
    __u8 dst[6];
    __u8 src[6];
    __u16 proto;
} __attribute__((packed));

struct iphdr {
    __u8 version_ihl;
    __u8 tos;
    __u16 tot_len;
    __u16 id;
    __u16 frag_off;
    __u8 ttl;
    __u8 protocol;
    __u16 check;
    __u32 saddr;
    __u32 daddr;
};

struct ipv6hdr {
    __u32 version_class_flow;
    __u16 payload_len;
    __u8 nexthdr;
    __u8 hop_limit;
    __u8 saddr[16];
    __u8 daddr[16];
};

struct udphdr {
    __u16 source;
    __u16 dest;
    __u16 len;
    __u16 check;
};

SEC("xdp")
int weft_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 zero = 0;
    struct weft_config *cfg = bpf_map_lookup_elem(&weft_config, &zero);
    if (!cfg)
        return XDP_PASS;

    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    struct udphdr *udp;
    if (eth->proto == be16(ETH_P_IP) && cfg->family == 4) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return XDP_PASS;
        // 0x45: version 4 without options; 0x3FFF: more-fragments flag or a fragment offset.
        if (ip->version_ihl != 0x45 || ip->protocol != IPPROTO_UDP || (ip->frag_off & be16(0x3FFF)) != 0)
            return XDP_PASS;
        if (ip->daddr != cfg->ipv4)
            return XDP_PASS;
        udp = (void *)(ip + 1);
    } else if (eth->proto == be16(ETH_P_IPV6) && cfg->family == 6) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return XDP_PASS;
        if (ip6->nexthdr != IPPROTO_UDP)
            return XDP_PASS;
        for (int i = 0; i < 16; i++)
            if (ip6->daddr[i] != cfg->ipv6[i])
                return XDP_PASS;
        udp = (void *)(ip6 + 1);
    } else {
        return XDP_PASS;
    }
    if ((void *)(udp + 1) > end)
        return XDP_PASS;
    if (udp->dest != cfg->vxlan_port && udp->dest != cfg->esp_port)
        return XDP_PASS;
    return bpf_redirect_map(&weft_xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
