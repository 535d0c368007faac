/* The one way a routed IPv4 packet leaves a program: TTL, MACs, redirect. */
#ifndef VND_FORWARD_H
#define VND_FORWARD_H

#include "eth.h"
#include "ipv4.h"
#include "pkt.h"
#include "verdict.h"

/*
 * The headers again after a translation (helpers may have moved the packet):
 * the IPv4 header with *eth set, or NULL with a drop verdict.
 */
static __always_inline struct iphdr *reread_ipv4(const struct vnd_pkt *p, struct ethhdr **eth,
						 struct vnd_verdict *v)
{
	struct iphdr *ip;

	*eth = pkt_data(p);
	ip = ipv4_header(*eth, pkt_end(p));
	if (!ip)
		verdict_drop(v, VND_DROP_MALFORMED);
	return ip;
}

static __always_inline void forward_ipv4(struct ethhdr *eth, struct iphdr *ip,
					 const __u8 *src_mac, const __u8 *dst_mac,
					 __u8 how, __u32 ifindex, __u8 reason,
					 struct vnd_verdict *v)
{
	int err = ipv4_dec_ttl(ip);

	if (err) {
		verdict_drop(v, err);
		return;
	}
	eth_rewrite(eth, src_mac, dst_mac);
	verdict_set(v, how, ifindex, reason);
}

#endif
