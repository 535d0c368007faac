/*
 * Every map of the datapath, declared once and pinned under VND_MAPS_DIR so
 * that the programs, the control plane and later program versions share them.
 * The keys and values are defined once, in the layouts section below: Python
 * reads that section itself (vnetdp/datapath/layouts.py), there is no copy.
 */
#ifndef VND_MAPS_H
#define VND_MAPS_H

#include "common.h"

#ifndef VND_MAX_ENDPOINTS
#define VND_MAX_ENDPOINTS 1024
#endif
#ifndef VND_MAX_CIDRS
#define VND_MAX_CIDRS 256
#endif
#ifndef VND_MAX_METRICS
#define VND_MAX_METRICS 16384
#endif
#ifndef VND_MAX_HOST_FLOWS
#define VND_MAX_HOST_FLOWS 16384
#endif
#ifndef VND_MAX_SNAT
#define VND_MAX_SNAT 131072     /* entries, two per translated flow */
#endif
#ifndef VND_MAX_SNAT_FRAGS
#define VND_MAX_SNAT_FRAGS 4096 /* fragmented datagrams of translated flows in flight */
#endif
#ifndef VND_MAX_POLICY_PREFIXES
#define VND_MAX_POLICY_PREFIXES 65536   /* remote prefixes of every compiled rule set */
#endif
#ifndef VND_MAX_POLICY_PORTS
#define VND_MAX_POLICY_PORTS 65536      /* port prefixes of every compiled rule set */
#endif
#ifndef VND_MAX_POLICY_FLOWS
#define VND_MAX_POLICY_FLOWS 65536      /* flows pods' rules allowed, one per pod and flow */
#endif
#ifndef VND_MAX_POLICY_DROPS
#define VND_MAX_POLICY_DROPS 16384      /* (pod, set, rule, direction) drop counters */
#endif
#ifndef VND_MAX_POLICY_FRAGS
#define VND_MAX_POLICY_FRAGS 4096       /* fragmented datagrams to or from pods with rules in flight */
#endif
#ifndef VND_EVENTS_BYTES
#define VND_EVENTS_BYTES (256 * 1024) /* the monitor's ring buffer: a power of 2 of whole pages */
#endif

/*
 * The layouts section: every struct, enum and constant that the control plane
 * shares with the programs. Python hands the lines between the two marker
 * lines to cffi's cdef, so they must stay plain C that cffi accepts: structs,
 * enums (constant expressions allowed), and #defines of integer literals only
 * (no expressions, no #if, no functions, no macros). Use the kernel's __u8,
 * __u16, __u32, __u64, __be16, __be32. Map declarations stay outside.
 */
/* vnd:layouts begin */

#define VND_EP_HOST_FLOWS 1     /* the host stack has delivered flows to this pod */
#define VND_EP_BANDWIDTH 2      /* vnd_bandwidth may hold rate limits for this pod */
#define VND_EP_PUBLIC_IP 4      /* the pod's address has a public IP of its own: traffic beyond the VNet leaves untranslated */

/* A pod on this node, keyed by its IPv4 address (network order). */
struct vnd_endpoint {
	__u32 ifindex;          /* host end of the pod's veth */
	__u8 pod_mac[6];
	__u8 host_mac[6];
	__u32 flags;            /* VND_EP_*: HOST_FLOWS set by the datapath, BANDWIDTH and PUBLIC_IP by the control plane */
};

/* One direction of a pod's rate limit (lib/bandwidth.h): ingress steers the
 * pod's traffic through its host veth's qdisc when bytes_per_s is set;
 * egress is also policed by GCRA, a packet passing while next_ns lies at
 * most 2 * burst_ns ahead of now. */
struct vnd_rate {
	__u64 bytes_per_s;      /* 0: unlimited */
	__u64 burst_ns;         /* the shaper's burst in bytes, as time at bytes_per_s */
	__u64 next_ns;          /* egress: the theoretical arrival time (bpf_ktime_get_ns()); the datapath advances it */
};

/* A pod's rate limits, keyed by its IPv4 address (network order); read only
 * for endpoints flagged VND_EP_BANDWIDTH. */
struct vnd_bandwidth {
	struct vnd_rate egress;  /* from the pod */
	struct vnd_rate ingress; /* to the pod */
};

/* A pod's flow as the pod sees it: one the host stack delivered (host_flows),
 * one its rules allowed (policy_flows; ICMP echo: the id is the pod's port). */
struct vnd_flow_key {
	__be32 pod;
	__be32 remote;
	__be16 pod_port;
	__be16 remote_port;
	__u8 proto;
	__u8 pad[3];
};

#define VND_NODE_LOCAL_SWITCHING 1
#define VND_NODE_SNAT 2
#define VND_NODE_ALLOW_HOST_AGENT 4  /* pods may reach the host agent (168.63.129.16 TCP 80, 32526) */
#define VND_NODE_ALLOW_METADATA 8    /* pods may reach instance metadata (169.254.169.254) */

/* Node settings: one entry, key 0. */
struct vnd_node {
	__u32 nic_ifindex;
	__u8 nic_mac[6];
	__u8 gw_mac[6];
	__be32 primary_ip;
	__u16 snat_port_min;    /* host order */
	__u16 snat_port_max;
	__u32 flags;            /* VND_NODE_* */
	__u32 snat_flows_per_endpoint; /* translated flows one pod may create; 0: no limit */
};

/* What a destination prefix in vnd_vnet_cidrs means. */
enum vnd_dest {
	VND_DEST_OUTSIDE = 0,   /* not in the map: beyond the VNet */
	VND_DEST_VNET = 1,      /* on the VNet: through the NIC to the gateway */
	VND_DEST_HOST = 2,      /* the node itself: to the host stack */
};

struct vnd_cidr_key {
	__u32 prefixlen;
	__be32 addr;
};

struct vnd_metrics_key {
	__u32 ifindex;          /* endpoint's host end, or the NIC */
	__u8 dir;               /* enum vnd_dir */
	__u8 reason;            /* enum vnd_reason */
	__u16 pad;
};

struct vnd_metrics_val {
	__u64 packets;
	__u64 bytes;
};

/* Which way a SNAT entry translates. */
enum vnd_snat_dir {
	VND_SNAT_OUT = 0,       /* key: the pod's tuple; value: primary IP, SNAT port */
	VND_SNAT_IN = 1,        /* key: the reply's tuple; value: pod address and port */
};

/* A flow as packets of one direction carry it; ICMP echo: the id is the port
 * on our side, the remote port is 0. */
struct vnd_snat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;               /* enum vnd_snat_dir */
	__u16 pad;
};

#define VND_SNAT_CLOSING 1      /* a TCP FIN or RST went through */
#define VND_SNAT_REPLIED 2      /* IN entries: a reply came since the flow opened (or a SYN reopened it) */
#define VND_SNAT_RESET 4        /* both entries: a TCP RST went through, either way: the port is free at once */

struct vnd_snat_val {
	__u64 last_seen;        /* bpf_ktime_get_ns(), refreshed at most once a second */
	__be32 addr;
	__be16 port;
	__u8 flags;             /* VND_SNAT_* */
	__u8 pad;
};

/* A pod's translated flows, as counted against the node's snat_flows_per_endpoint:
 * the datapath adds each flow it creates, the control plane's sweep overwrites
 * the count with a recount. A pod without an entry has none. */
struct vnd_snat_quota {
	__u32 flows;
};

/* A fragmented datagram of a translated flow, as its fragments carry it: the
 * first fragment is translated by its ports, later ones by this key. */
struct vnd_snat_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;              /* the IPv4 identification */
	__u8 proto;
	__u8 dir;               /* enum vnd_snat_dir */
};

struct vnd_snat_frag_val {
	__u64 first_seen;       /* bpf_ktime_get_ns() of the first fragment */
	__be32 addr;            /* the translated address: OUT the primary IP, IN the pod's */
	__u32 pad;
};

#define VND_MONITOR_DROPS 1     /* an event for every drop */
#define VND_MONITOR_TRACE 2     /* an event for every packet forwarded: into a pod, to the VNet, to the host */
#define VND_MONITOR_NIC_PASS 4  /* with TRACE: the host's own traffic from the NIC (PASS_NIC) too */

/* The monitor switch (vnetdp monitor): one entry, key 0. The programs read
 * it once per verdict; with no flag set that read is all a packet pays. */
struct vnd_monitor {
	__u32 flags;            /* VND_MONITOR_*, set and cleared by the control plane */
	__u32 pad;
	__u64 lost;             /* events the ring buffer had no room for (the datapath counts) */
};

/* The program a verdict comes from. */
enum vnd_hook {
	VND_HOOK_FROM_CONTAINER = 1,    /* tc ingress on a pod's host veth */
	VND_HOOK_TO_CONTAINER = 2,      /* tc egress on a pod's host veth */
	VND_HOOK_FROM_NIC = 3,          /* tc ingress on the NIC */
	VND_HOOK_FROM_NIC_XDP = 4,      /* XDP on the NIC */
};

/* One record of the events ring buffer: a verdict and the packet's headers as
 * the packet leaves the program (after a translation: the translated ones). */
struct vnd_event {
	__u64 ts_ns;            /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u32 ifindex;          /* whose counters moved: a pod's host veth, or the NIC */
	__u32 out_ifindex;      /* the redirect's target; 0 for drops and the host stack */
	__u32 len;              /* the frame's length */
	__u8 hook;              /* enum vnd_hook */
	__u8 dir;               /* enum vnd_dir */
	__u8 reason;            /* enum vnd_reason */
	__u8 proto;             /* IPv4 protocol; 0 for other frames */
	__be16 ethertype;       /* 0 when the frame is shorter than an Ethernet header */
	__u16 pad;
	__be32 saddr;           /* IPv4 addresses; ARP: sender and target */
	__be32 daddr;
	__be16 sport;           /* TCP/UDP ports; ICMP: type and code; else 0 */
	__be16 dport;
};

/* Test builds only (VND_TEST_TRACE): the last redirect a program asked for. */
struct vnd_redirect_trace {
	__u32 ifindex;
	__u32 how;              /* enum vnd_how */
};

/* Node policy (lib/policy.h): which of a pod's rules a packet meets. */
enum vnd_policy_dir {
	VND_POLICY_INBOUND = 0,         /* what the pod receives */
	VND_POLICY_OUTBOUND = 1,        /* what the pod sends */
};

#define VND_POLICY_PROTO_OTHER 255      /* the protocol class of all but TCP, UDP and ICMP */
#define VND_POLICY_NO_RULE 65535        /* no rule: nothing decided (denied), or the host's own flow */
#define VND_POLICY_CANDIDATES 4         /* rules one port entry holds */
#define VND_POLICY_LAYERS 2             /* rules with broad remote prefixes, and the rest */

/* The policy switch: one entry, key 0. */
struct vnd_policy_node {
	__u32 endpoints;        /* nonzero when an endpoint of this node may have a rule set */
};

/* A pod's rule set, keyed by its IPv4 address (network order). */
struct vnd_policy_endpoint {
	__u32 set;              /* a compiled set's id */
};

/* A remote prefix of a compiled set's layer, in one direction (LPM trie). */
struct vnd_policy_addr_key {
	__u32 prefixlen;        /* 64 + the prefix's length */
	__u32 set;
	__u16 dir;              /* enum vnd_policy_dir */
	__u16 layer;            /* below VND_POLICY_LAYERS */
	__be32 addr;
};

/* The rules of a set whose remote prefixes hold an address. */
struct vnd_policy_class {
	__u32 id;
};

/* A destination port prefix of an address class, for one protocol (LPM trie). */
struct vnd_policy_port_key {
	__u32 prefixlen;        /* 80 + the port prefix's length */
	__u32 set;
	__u32 class;
	__u8 proto;             /* IPPROTO_TCP, _UDP, _ICMP or VND_POLICY_PROTO_OTHER */
	__u8 pad;
	__be16 port;            /* 0 for protocols without ports */
};

struct vnd_policy_candidate {
	__u16 rule;             /* its index in the rule set */
	__u8 allow;             /* 1: Allow, 0: Deny */
	__u8 pad;
	__u16 sport_min;        /* the source ports it holds, host order */
	__u16 sport_max;
};

/* The rules that may decide a port prefix's packets, by priority: the first
 * that holds the packet's source port decides. */
struct vnd_policy_rules {
	__u32 count;
	struct vnd_policy_candidate rule[VND_POLICY_CANDIDATES];
};

#define VND_POLICY_FLOW_CLOSING 1       /* a TCP FIN or RST went through */
#define VND_POLICY_FLOW_REPLIED 2       /* a packet came the other way */

/* A flow a pod's rules allowed, keyed by struct vnd_flow_key. */
struct vnd_policy_flow {
	__u64 last_seen;        /* bpf_ktime_get_ns(), refreshed at most once a second */
	__u32 set;              /* the set that allowed it */
	__u16 rule;             /* the rule that allowed it */
	__u8 dir;               /* enum vnd_policy_dir: the packet that opened it */
	__u8 flags;             /* VND_POLICY_FLOW_* */
};

/* Packets a rule denied a pod (per-CPU; value struct vnd_metrics_val). */
struct vnd_policy_drop_key {
	__be32 pod;
	__u32 set;
	__u16 rule;
	__u8 dir;               /* enum vnd_policy_dir */
	__u8 pad;
};

/* A datagram whose first fragment passed a pod's rules (value: first seen). */
struct vnd_policy_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;              /* the IPv4 identification */
	__u8 proto;
	__u8 pad;
};

/* vnd:layouts end */

BPF_TABLE_PINNED("hash", __be32, struct vnd_endpoint, vnd_endpoints,
		 VND_MAX_ENDPOINTS, VND_MAPS_DIR "/endpoints");
BPF_TABLE_PINNED("hash", __be32, struct vnd_bandwidth, vnd_bandwidth,
		 VND_MAX_ENDPOINTS, VND_MAPS_DIR "/bandwidth");
BPF_TABLE_PINNED("array", __u32, struct vnd_node, vnd_node, 1,
		 VND_MAPS_DIR "/node");
BPF_TABLE_PINNED("lpm_trie", struct vnd_cidr_key, __u8, vnd_vnet_cidrs,
		 VND_MAX_CIDRS, VND_MAPS_DIR "/vnet_cidrs", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("percpu_hash", struct vnd_metrics_key, struct vnd_metrics_val,
		 vnd_metrics, VND_MAX_METRICS, VND_MAPS_DIR "/metrics");
/* LRU: an evicted entry only sends a long-idle reply the datapath's way. */
BPF_TABLE_PINNED("lru_hash", struct vnd_flow_key, __u64, vnd_host_flows,
		 VND_MAX_HOST_FLOWS, VND_MAPS_DIR "/host_flows");
/* A plain bounded hash, not LRU: when it is full a new flow is a counted drop,
 * where LRU would silently evict one direction of a live flow. */
BPF_TABLE_PINNED("hash", struct vnd_snat_key, struct vnd_snat_val, vnd_snat,
		 VND_MAX_SNAT, VND_MAPS_DIR "/snat");
BPF_TABLE_PINNED("hash", __be32, struct vnd_snat_quota, vnd_snat_quota,
		 VND_MAX_ENDPOINTS, VND_MAPS_DIR "/snat_quota");
/* LRU: a datagram's fragments follow its first within moments; old ones may go. */
BPF_TABLE_PINNED("lru_hash", struct vnd_snat_frag_key, struct vnd_snat_frag_val,
		 vnd_snat_frags, VND_MAX_SNAT_FRAGS, VND_MAPS_DIR "/snat_frags");
/* Node policy (lib/policy.h). Flows: bounded, not LRU, as vnd_snat. */
BPF_TABLE_PINNED("array", __u32, struct vnd_policy_node, vnd_policy_node, 1,
		 VND_MAPS_DIR "/policy_node");
BPF_TABLE_PINNED("hash", __be32, struct vnd_policy_endpoint, vnd_policy_endpoints,
		 VND_MAX_ENDPOINTS, VND_MAPS_DIR "/policy_endpoints");
BPF_TABLE_PINNED("lpm_trie", struct vnd_policy_addr_key, struct vnd_policy_class, vnd_policy_addrs,
		 VND_MAX_POLICY_PREFIXES, VND_MAPS_DIR "/policy_addrs", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct vnd_policy_port_key, struct vnd_policy_rules, vnd_policy_ports,
		 VND_MAX_POLICY_PORTS, VND_MAPS_DIR "/policy_ports", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct vnd_flow_key, struct vnd_policy_flow, vnd_policy_flows,
		 VND_MAX_POLICY_FLOWS, VND_MAPS_DIR "/policy_flows");
BPF_TABLE_PINNED("percpu_hash", struct vnd_policy_drop_key, struct vnd_metrics_val,
		 vnd_policy_drops, VND_MAX_POLICY_DROPS, VND_MAPS_DIR "/policy_drops");
BPF_TABLE_PINNED("lru_hash", struct vnd_policy_frag_key, __u64, vnd_policy_frags,
		 VND_MAX_POLICY_FRAGS, VND_MAPS_DIR "/policy_frags");

BPF_TABLE_PINNED("array", __u32, struct vnd_monitor, vnd_monitor, 1, VND_MAPS_DIR "/monitor");

/*
 * A ring buffer pinned like the tables above. bcc 0.26 pins any map whose
 * section names a path after its type, but its BPF_RINGBUF_OUTPUT takes no
 * path and a BPF_TABLE_PINNED table has no ringbuf_output() method: this is
 * BPF_RINGBUF_OUTPUT with the pin path in the section. A ring buffer has no
 * key or value (bcc creates it with neither, so the map has no BTF); the
 * record type stands as the leaf, which puts it in the programs' BTF.
 */
#define VND_RINGBUF_PINNED(_name, _record, _bytes, _pin)                     \
	struct _name##_table_t {                                             \
		int key;                                                     \
		_record leaf;                                                \
		int (*ringbuf_output)(void *, __u64, __u64);                 \
		__u32 max_entries;                                           \
	};                                                                   \
	__attribute__((section("maps/ringbuf:" _pin)))                       \
	struct _name##_table_t _name = { .max_entries = (_bytes) }

VND_RINGBUF_PINNED(vnd_events, struct vnd_event, VND_EVENTS_BYTES, VND_MAPS_DIR "/events");

#ifdef VND_TEST_TRACE
BPF_TABLE_PINNED("array", __u32, struct vnd_redirect_trace, vnd_trace, 1,
		 VND_MAPS_DIR "/trace");
#endif

static __always_inline struct vnd_node *node_config(void)
{
	__u32 zero = 0;
	struct vnd_node *node = vnd_node.lookup(&zero);

	/* An all-zero entry means the control plane has not configured the node. */
	if (node && node->nic_ifindex)
		return node;
	return NULL;
}

/* The enum vnd_dest class of the longest prefix holding addr. */
static __always_inline __u8 dest_class(__be32 addr)
{
	struct vnd_cidr_key key = { .prefixlen = 32, .addr = addr };
	__u8 *dest = vnd_vnet_cidrs.lookup(&key);

	return dest ? *dest : VND_DEST_OUTSIDE;
}

#endif
