/*
 * Source NAT to the node's primary IP for pod traffic that leaves the VNet
 * (SPEC §5: pod step 5, NIC step 2), on the connection table vnd_snat.
 *
 * A flow has two entries, both inserted with BPF_NOEXIST: OUT, keyed by the
 * pod's tuple, holds the primary IP and the SNAT port; IN, keyed by the tuple
 * replies carry, holds the pod's address and port. Creating a flow claims the
 * IN entry first: a port is free toward a destination exactly when that
 * insert succeeds. Each pod's new flows are counted in vnd_snat_quota and
 * refused beyond the node's snat_flows_per_endpoint. The datapath only
 * stamps last_seen, TCP closing and the first reply; expiry, and the recount
 * of each pod's flows, are the control plane's sweep
 * (vnetdp/datapath/snat.py). Fragments: lib/snat_frag.h.
 */
#ifndef VND_SNAT_H
#define VND_SNAT_H

#include "common.h"
#include "ipv4.h"
#include "maps.h"
#include "pkt.h"
#include "reasons.h"
#include "snat_frag.h"

#ifndef VND_SNAT_RETRIES
#define VND_SNAT_RETRIES 32     /* random ports tried after the first choice */
#endif
#define VND_SNAT_TOUCH_NS 1000000000ULL
#ifndef VND_SNAT_REUSE_NS
#define VND_SNAT_REUSE_NS 2000000000ULL /* a closed flow's port is free after this */
#endif

/* The transport fields of one packet that SNAT reads and rewrites. */
struct vnd_l4 {
	__u32 port_off;         /* the port (or echo id) on our side of the flow */
	__u32 csum_off;         /* the TCP, UDP or ICMP checksum */
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
};

/*
 * Parse the transport header after ip, which ipv4_check() has passed: an
 * unfragmented packet or a first fragment (ipv4_has_l4()). Outbound, our
 * side is the source (ICMP: echo requests); inbound, the destination (ICMP:
 * echo replies). Returns -1 for what cannot be translated: other protocols
 * and ICMP types.
 */
static __always_inline int snat_l4(const struct vnd_pkt *p, struct iphdr *ip, int inbound,
				   struct vnd_l4 *l4)
{
	void *th = (void *)ip + ip->ihl * 4;
	void *end = pkt_end(p);
	__u32 off = ETH_HLEN + ip->ihl * 4;

	if (!ipv4_has_l4(ip))
		return -1;
	l4->proto = ip->protocol;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = th;

		if ((void *)(tcp + 1) > end)
			return -1;
		l4->sport = tcp->source;
		l4->dport = tcp->dest;
		l4->csum_off = off + offsetof(struct tcphdr, check);
		l4->tcp_flags = ((__u8 *)tcp)[13];
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = th;

		if ((void *)(udp + 1) > end)
			return -1;
		l4->sport = udp->source;
		l4->dport = udp->dest;
		l4->csum_off = off + offsetof(struct udphdr, check);
	} else if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *icmp = th;

		if ((void *)(icmp + 1) > end)
			return -1;
		if (icmp->type != (inbound ? ICMP_ECHOREPLY : ICMP_ECHO) || icmp->code)
			return -1;
		l4->sport = inbound ? 0 : icmp->un.echo.id;
		l4->dport = inbound ? icmp->un.echo.id : 0;
		l4->csum_off = off + offsetof(struct icmphdr, checksum);
		l4->port_off = off + offsetof(struct icmphdr, un.echo.id);
		return 0;
	} else {
		return -1;
	}
	/* TCP and UDP: source port at 0, destination port at 2. */
	l4->port_off = off + (inbound ? 2 : 0);
	return 0;
}

static __always_inline void snat_key(struct vnd_snat_key *key, __be32 saddr, __be32 daddr,
				     __be16 sport, __be16 dport, __u8 proto, __u8 dir)
{
	key->saddr = saddr;
	key->daddr = daddr;
	key->sport = sport;
	key->dport = dport;
	key->proto = proto;
	key->dir = dir;
	key->pad = 0;
}

/* The key of the other direction of the flow that key and val describe. */
static __always_inline void snat_reverse_key(struct vnd_snat_key *rev,
					     const struct vnd_snat_key *key,
					     const struct vnd_snat_val *val)
{
	if (key->dir == VND_SNAT_OUT)
		snat_key(rev, key->daddr, val->addr, key->dport, val->port, key->proto, VND_SNAT_IN);
	else
		snat_key(rev, val->addr, key->saddr, val->port, key->sport, key->proto, VND_SNAT_OUT);
}

/* Set (or clear) flags on the other entry of val's flow. */
static __always_inline void snat_flag_other(const struct vnd_snat_key *key, const struct vnd_snat_val *val,
					    __u8 set, __u8 clear)
{
	struct vnd_snat_val *other;
	struct vnd_snat_key rev;

	snat_reverse_key(&rev, key, val);
	other = vnd_snat.lookup(&rev);
	if (other)
		other->flags = (other->flags & ~clear) | set;
}

/*
 * Record activity on an entry: last_seen, and TCP closing or reopening. A
 * FIN marks its own direction; a RST, which ends the connection at once on
 * both ends, marks both entries reset.
 */
static __always_inline void snat_touch(struct vnd_snat_val *val, const struct vnd_snat_key *key,
				       __u8 tcp_flags)
{
	__u64 now = bpf_ktime_get_ns();
	__u8 reset = VND_SNAT_CLOSING | VND_SNAT_RESET;

	if (now - val->last_seen > VND_SNAT_TOUCH_NS)
		val->last_seen = now;
	if (tcp_flags & VND_TCP_RST) {
		val->flags |= reset;
		snat_flag_other(key, val, reset, 0);
	} else if (tcp_flags & VND_TCP_FIN) {
		val->flags |= VND_SNAT_CLOSING;
	} else if ((tcp_flags & (VND_TCP_SYN | VND_TCP_ACK)) == VND_TCP_SYN &&
		   (val->flags & VND_SNAT_CLOSING)) {
		/* The same tuple opens a new connection: both directions live
		 * again, and it has seen no reply yet. */
		val->flags &= ~(reset | VND_SNAT_REPLIED);
		snat_flag_other(key, val, 0, reset | VND_SNAT_REPLIED);
	}
}

/*
 * A flow of the pod at pod is gone before the sweep's recount: one fewer
 * against its quota. Only a count above zero goes down (two CPUs releasing a
 * pod's last counted flow at once could still wrap it: the pod would then
 * be refused new flows until the next recount, within seconds; a 32-bit
 * compare-and-swap needs a newer BPF instruction set than bcc targets).
 */
static __always_inline void snat_quota_release(__be32 pod)
{
	struct vnd_snat_quota *quota = vnd_snat_quota.lookup(&pod);

	if (quota && quota->flows)
		__sync_fetch_and_add(&quota->flows, -1);
}

/*
 * Take over a port whose flow toward this destination has closed, as
 * conntrack reuses a closed or TIME_WAIT tuple for a new SYN: at once after
 * a RST either way, after VND_SNAT_REUSE_NS of quiet after a FIN in reply.
 * Without it a busy destination would run out of ports while closed flows
 * wait for the sweep. Returns 1 when the port is free now.
 */
static __always_inline int snat_reclaim(struct vnd_snat_key *in_key, __u64 now)
{
	struct vnd_snat_val *old = vnd_snat.lookup(in_key);
	struct vnd_snat_key out_key;

	if (!old || !(old->flags & VND_SNAT_CLOSING))
		return 0;
	if (!(old->flags & VND_SNAT_RESET) && now - old->last_seen < VND_SNAT_REUSE_NS)
		return 0;
	snat_reverse_key(&out_key, in_key, old);
	snat_quota_release(old->addr);
	vnd_snat.delete(&out_key);
	vnd_snat.delete(in_key);
	return 1;
}

/*
 * Whether the pod at pod may not create another translated flow: the node
 * limits each pod's flows (snat_flows_per_endpoint, 0 for no limit) so that
 * one pod cannot take the table or a destination's ports from the others.
 * A pod without a count has no flows.
 */
static __always_inline int snat_quota_reached(const struct vnd_node *node, __be32 pod)
{
	struct vnd_snat_quota *quota;

	if (!node->snat_flows_per_endpoint)
		return 0;
	quota = vnd_snat_quota.lookup(&pod);
	return quota && quota->flows >= node->snat_flows_per_endpoint;
}

/* Count a flow the pod at pod has created. */
static __always_inline void snat_quota_charge(__be32 pod)
{
	struct vnd_snat_quota *quota = vnd_snat_quota.lookup(&pod), one = { .flows = 1 };

	if (!quota) {
		if (!vnd_snat_quota.insert(&pod, &one))
			return;
		quota = vnd_snat_quota.lookup(&pod);    /* another CPU created it meanwhile */
		if (!quota)
			return;
	}
	__sync_fetch_and_add(&quota->flows, 1);
}

static __always_inline __u16 snat_random_port(__u16 min, __u32 range)
{
	return min + bpf_get_prandom_u32() % range;
}

/*
 * Create both entries of a new flow; *tr receives the translation. The pod's
 * own port is kept when it lies in the range and is free, otherwise random
 * ports are tried. The pod's quota is checked first and charged once both
 * entries are in. Returns 0 or a drop reason.
 */
static __always_inline int snat_create(struct vnd_snat_key *out_key,
				       const struct vnd_node *node, struct vnd_snat_val *tr)
{
	__u64 now = bpf_ktime_get_ns();
	struct vnd_snat_val in_val = { .last_seen = now, .addr = out_key->saddr,
				       .port = out_key->sport };
	__u16 min = node->snat_port_min, max = node->snat_port_max;
	__u16 port = bpf_ntohs(out_key->sport);
	struct vnd_snat_val *raced;
	struct vnd_snat_key in_key;
	int i, err = -VND_EEXIST;
	__u32 range;

	if (snat_quota_reached(node, out_key->saddr))
		return VND_DROP_SNAT_QUOTA;
	if (!min || max < min)
		return VND_DROP_SNAT_NO_PORT;
	range = (__u32)max - min + 1;
	if (port < min || port > max)
		port = snat_random_port(min, range);
	snat_key(&in_key, out_key->daddr, node->primary_ip, out_key->dport, 0, out_key->proto,
		 VND_SNAT_IN);
	for (i = 0; i <= VND_SNAT_RETRIES; i++) {
		in_key.dport = bpf_htons(port);
		err = vnd_snat.insert(&in_key, &in_val);
		if (err == -VND_EEXIST && out_key->proto == IPPROTO_TCP && snat_reclaim(&in_key, now))
			err = vnd_snat.insert(&in_key, &in_val);
		if (err != -VND_EEXIST)
			break;
		port = snat_random_port(min, range);
	}
	if (err)
		return err == -VND_EEXIST ? VND_DROP_SNAT_NO_PORT : VND_DROP_SNAT_TABLE_FULL;
	tr->last_seen = now;
	tr->addr = node->primary_ip;
	tr->port = in_key.dport;
	tr->flags = 0;
	tr->pad = 0;
	err = vnd_snat.insert(out_key, tr);
	if (!err) {
		snat_quota_charge(out_key->saddr);
		return 0;
	}
	vnd_snat.delete(&in_key);
	/* Another CPU created this flow meanwhile: use its translation. */
	raced = err == -VND_EEXIST ? vnd_snat.lookup(out_key) : NULL;
	if (!raced)
		return VND_DROP_SNAT_TABLE_FULL;
	*tr = *raced;
	return 0;
}

/*
 * Rewrite one side of a translated packet: the address at addr_off and the
 * port (or echo id) at l4->port_off, with every checksum that covers them.
 */
static __always_inline int snat_rewrite(struct vnd_pkt *p, __u32 ip_off, __u32 addr_off,
					const struct vnd_l4 *l4, __be32 old_addr, __be32 new_addr,
					__be16 old_port, __be16 new_port)
{
	__u64 udp = l4->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__be16 *port;

	if (pkt_set32(p, addr_off, new_addr, ip_off + offsetof(struct iphdr, check)))
		return -1;
	if (l4->proto == IPPROTO_ICMP)
		return pkt_set16(p, l4->port_off, new_port, l4->csum_off);
	port = pkt_u16(p, l4->port_off);
	if (!port)
		return -1;
	*port = new_port;
	if (pkt_l4_csum(p, l4->csum_off, old_addr, new_addr, BPF_F_PSEUDO_HDR | udp | 4))
		return -1;
	return pkt_l4_csum(p, l4->csum_off, old_port, new_port, udp | 2);
}

/*
 * Translate the source of an unfragmented packet or a first fragment
 * leaving the VNet; *addr receives the new source address. Returns
 * VND_FWD_SNAT or a drop reason.
 */
static __always_inline int snat_translate_out(struct vnd_pkt *p, struct iphdr *ip,
					      const struct vnd_node *node, __be32 *addr)
{
	__u32 ip_off = ETH_HLEN;
	struct vnd_snat_val *found, tr;
	struct vnd_snat_key key;
	struct vnd_l4 l4 = {};
	int err;

	if (snat_l4(p, ip, 0, &l4))
		return VND_DROP_SNAT_UNSUPPORTED;
	snat_key(&key, ip->saddr, ip->daddr, l4.sport, l4.dport, l4.proto, VND_SNAT_OUT);
	found = vnd_snat.lookup(&key);
	if (found) {
		snat_touch(found, &key, l4.tcp_flags);
		tr = *found;
	} else {
		err = snat_create(&key, node, &tr);
		if (err)
			return err;
	}
	*addr = tr.addr;
	if (snat_rewrite(p, ip_off, ip_off + offsetof(struct iphdr, saddr), &l4, key.saddr,
			 tr.addr, l4.sport, tr.port))
		return VND_DROP_MALFORMED;
	return VND_FWD_SNAT;
}

/*
 * Rewrite the destination of an unfragmented reply or a first fragment
 * back to the pod, *pod receiving the pod's address, and mark its flow
 * replied. Returns as snat_reply().
 */
static __always_inline int snat_translate_in(struct vnd_pkt *p, struct iphdr *ip,
					     struct vnd_endpoint **ep, __be32 *pod)
{
	__u32 ip_off = ETH_HLEN;
	struct vnd_snat_val *in, tr;
	struct vnd_snat_key key;
	struct vnd_l4 l4 = {};

	if (snat_l4(p, ip, 1, &l4))
		return 0;
	snat_key(&key, ip->saddr, ip->daddr, l4.sport, l4.dport, l4.proto, VND_SNAT_IN);
	in = vnd_snat.lookup(&key);
	if (!in)
		return 0;
	*ep = vnd_endpoints.lookup(&in->addr);
	if (!*ep)
		return 0;
	snat_touch(in, &key, l4.tcp_flags);
	if (!(in->flags & VND_SNAT_REPLIED))
		in->flags |= VND_SNAT_REPLIED;
	tr = *in;
	*pod = tr.addr;
	if (snat_rewrite(p, ip_off, ip_off + offsetof(struct iphdr, daddr), &l4, key.daddr,
			 tr.addr, l4.dport, tr.port))
		return VND_DROP_MALFORMED;
	return VND_FWD_SNAT_REPLY;
}

/*
 * A packet of a translated flow in direction dir (enum vnd_snat_dir, a
 * constant): unfragmented, or a first fragment, translated by its flow
 * (needing node outbound; setting *ep inbound) and recorded for the later
 * fragments of its datagram, or a later fragment, which follows its first.
 * Returns as snat_reply(), VND_FWD_SNAT outbound.
 */
static __always_inline int snat_packet(struct vnd_pkt *p, struct iphdr *ip, __u8 dir,
				       const struct vnd_node *node, struct vnd_endpoint **ep)
{
	int frag = ipv4_fragment(ip), reason;
	struct vnd_snat_frag_key frag_key;
	__be32 addr = 0;

	snat_frag_key(&frag_key, ip, dir);
	if (frag == VND_FRAG_LATER)
		return snat_frag_follow(p, &frag_key, dir, ep);
	if (dir == VND_SNAT_OUT)
		reason = snat_translate_out(p, ip, node, &addr);
	else
		reason = snat_translate_in(p, ip, ep, &addr);
	if (frag == VND_FRAG_FIRST)
		snat_frag_first(&frag_key, reason && reason < VND_DROP_MIN ? addr : 0);
	return reason;
}

/*
 * SPEC §5 pod step 5: translate the source of a packet leaving the VNet to
 * the primary IP and a SNAT port. Returns VND_FWD_SNAT, VND_FWD_SNAT_FRAGMENT
 * for a later fragment, or a drop reason; after a translation the caller
 * re-reads the headers (helpers may have moved them).
 */
static __always_inline int snat_egress(struct vnd_pkt *p, struct iphdr *ip,
				       const struct vnd_node *node)
{
	struct vnd_endpoint *none = NULL;
	int reason = snat_packet(p, ip, VND_SNAT_OUT, node, &none);

	return reason ? reason : VND_DROP_SNAT_UNSUPPORTED;
}

/*
 * SPEC §5 NIC step 2, a reply: rewrite the destination back to the pod.
 * Returns 0 when the packet belongs to no translated flow (it passes to the
 * host untouched), VND_FWD_SNAT_REPLY, or VND_FWD_SNAT_FRAGMENT for a later
 * fragment, with *ep set, or a drop reason.
 */
static __always_inline int snat_reply(struct vnd_pkt *p, struct iphdr *ip,
				      struct vnd_endpoint **ep)
{
	return snat_packet(p, ip, VND_SNAT_IN, NULL, ep);
}

/*
 * SPEC §5 NIC step 2, an ICMP error quoting a translated packet (RFC 5508):
 * the outer destination, the quoted source and the quoted source port (or
 * echo id) go back to the pod's. The quoted transport checksum is left as
 * quoted: the quote is usually cut before it and nobody verifies it. Only
 * whole ICMP errors are read (a fragmented one's later fragments would
 * reach the host), and only quotes of packets that start with
 * their transport header, within the packet ipv4_check() has passed.
 * Returns as snat_reply().
 */
static __always_inline int snat_icmp_error(struct vnd_pkt *p, struct iphdr *ip,
					   struct vnd_endpoint **ep)
{
	__u32 ip_off = ETH_HLEN, icmp_off = ETH_HLEN + ip->ihl * 4;
	struct icmphdr *icmp = (void *)ip + ip->ihl * 4;
	void *end = pkt_end(p);
	__be16 nat_port, remote_port = 0, old_check, *check;
	struct vnd_snat_val *in, tr;
	__u32 inner_off, port_off, quote_len;
	struct vnd_snat_key key;
	struct iphdr *inner;
	__be32 old_saddr;
	__u8 *th;

	if (ip->protocol != IPPROTO_ICMP || ipv4_fragment(ip) != VND_FRAG_NONE ||
	    (void *)(icmp + 1) > end)
		return 0;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED &&
	    icmp->type != ICMP_PARAMETERPROB)
		return 0;
	inner = (void *)(icmp + 1);
	quote_len = ipv4_len(p, ip) - ip->ihl * 4 - sizeof(*icmp);
	if ((void *)(inner + 1) > end || inner->version != 4 || inner->ihl < 5 ||
	    !ipv4_has_l4(inner) || inner->ihl * 4 + 8 > quote_len)
		return 0;
	th = (void *)inner + inner->ihl * 4;
	if ((void *)(th + 8) > end)
		return 0;
	inner_off = icmp_off + sizeof(*icmp);
	port_off = inner_off + inner->ihl * 4;
	if (inner->protocol == IPPROTO_TCP || inner->protocol == IPPROTO_UDP) {
		nat_port = *(__be16 *)th;
		remote_port = *(__be16 *)(th + 2);
	} else if (inner->protocol == IPPROTO_ICMP && th[0] == ICMP_ECHO) {
		port_off += offsetof(struct icmphdr, un.echo.id);
		nat_port = *(__be16 *)(th + offsetof(struct icmphdr, un.echo.id));
	} else {
		return 0;
	}
	snat_key(&key, inner->daddr, inner->saddr, remote_port, nat_port, inner->protocol,
		 VND_SNAT_IN);
	old_saddr = inner->saddr;
	old_check = inner->check;
	in = vnd_snat.lookup(&key);
	if (!in)
		return 0;
	*ep = vnd_endpoints.lookup(&in->addr);
	if (!*ep)
		return 0;
	tr = *in;
	/* The ICMP checksum covers the quote: every change inside it is folded in. */
	if (pkt_set32(p, ip_off + offsetof(struct iphdr, daddr), tr.addr,
		      ip_off + offsetof(struct iphdr, check)) ||
	    pkt_set32(p, inner_off + offsetof(struct iphdr, saddr), tr.addr,
		      inner_off + offsetof(struct iphdr, check)) ||
	    pkt_csum32(p, icmp_off + 2, old_saddr, tr.addr))
		return VND_DROP_MALFORMED;
	check = pkt_u16(p, inner_off + offsetof(struct iphdr, check));
	if (!check || pkt_csum16(p, icmp_off + 2, old_check, *check) ||
	    pkt_set16(p, port_off, tr.port, icmp_off + 2))
		return VND_DROP_MALFORMED;
	return VND_FWD_SNAT_ICMP_ERROR;
}

#endif
