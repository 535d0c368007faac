/* IPv4 header validation and TTL handling, on directly accessed packet data. */
#ifndef VND_IPV4_H
#define VND_IPV4_H

#include "common.h"
#include "csum.h"
#include "reasons.h"

/*
 * The IPv4 header after eth, or NULL when the frame is too short to hold it
 * or the header is not a valid IPv4 header (version, IHL).
 */
static __always_inline struct iphdr *ipv4_header(struct ethhdr *eth, void *data_end)
{
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > data_end)
		return NULL;
	if (ip->version != 4 || ip->ihl < 5)
		return NULL;
	if ((void *)ip + ip->ihl * 4 > data_end)
		return NULL;
	return ip;
}

/*
 * Decrement TTL as a router does before forwarding. Returns 0, or
 * VND_DROP_TTL_EXCEEDED when the packet must not be forwarded.
 */
static __always_inline int ipv4_dec_ttl(struct iphdr *ip)
{
	__be16 old, new;

	if (ip->ttl <= 1)
		return VND_DROP_TTL_EXCEEDED;
	old = *(__be16 *)&ip->ttl;
	ip->ttl--;
	new = *(__be16 *)&ip->ttl;
	vnd_csum_replace16(&ip->check, old, new);
	return 0;
}

#endif
