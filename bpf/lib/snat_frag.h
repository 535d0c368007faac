/*
 * Fragments of translated datagrams (SPEC §5), on the table vnd_snat_frags,
 * as the mature eBPF NATs track them. Only a first fragment carries the
 * transport header a flow is matched by: lib/snat.h translates it as it
 * would the whole datagram (the incremental transport checksum update stays
 * right for the datagram, since only the address in the pseudo-header and
 * the port, in the first fragment, change) and records here, by (source,
 * destination, IP id, protocol), the address it gave it. Later fragments of
 * that datagram get the same address, nothing else. A later fragment that
 * comes before its first, or long after it, is not followed. Nothing is
 * reassembled.
 */
#ifndef VND_SNAT_FRAG_H
#define VND_SNAT_FRAG_H

#include "common.h"
#include "maps.h"
#include "pkt.h"
#include "reasons.h"

#ifndef VND_SNAT_FRAG_NS
#define VND_SNAT_FRAG_NS 10000000000ULL /* how long a first fragment's record is followed */
#endif

static __always_inline void snat_frag_key(struct vnd_snat_frag_key *key, const struct iphdr *ip,
					  __u8 dir)
{
	key->saddr = ip->saddr;
	key->daddr = ip->daddr;
	key->id = ip->id;
	key->proto = ip->protocol;
	key->dir = dir;
}

/*
 * After a first fragment: its later fragments are to get addr; addr 0 (it
 * was not translated) drops the record of an earlier datagram with the same
 * key, so that this one's later fragments are not taken for that one's.
 */
static __always_inline void snat_frag_first(struct vnd_snat_frag_key *key, __be32 addr)
{
	struct vnd_snat_frag_val val = { .first_seen = bpf_ktime_get_ns(), .addr = addr };

	if (addr)
		vnd_snat_frags.update(key, &val);
	else
		vnd_snat_frags.delete(key);
}

/* For a later fragment: the address its first fragment was given, or 0. */
static __always_inline __be32 snat_frag_addr(struct vnd_snat_frag_key *key)
{
	struct vnd_snat_frag_val *val = vnd_snat_frags.lookup(key);

	if (!val || bpf_ktime_get_ns() - val->first_seen > VND_SNAT_FRAG_NS)
		return 0;
	return val->addr;
}

/*
 * A later fragment: the address its first fragment was given written as its
 * source (dir VND_SNAT_OUT) or destination (VND_SNAT_IN: into the pod *ep,
 * which must exist), with the IPv4 checksum. dir is the key's, as a
 * constant the compiler prunes by. Returns VND_FWD_SNAT_FRAGMENT, 0 when
 * there is nothing to follow (the packet is left untouched), or a drop
 * reason.
 */
static __always_inline int snat_frag_follow(struct vnd_pkt *p, struct vnd_snat_frag_key *key,
					    __u8 dir, struct vnd_endpoint **ep)
{
	__u32 addr_off = offsetof(struct iphdr, saddr);
	__be32 addr = snat_frag_addr(key);

	if (!addr)
		return 0;
	if (dir == VND_SNAT_IN) {
		*ep = vnd_endpoints.lookup(&addr);
		if (!*ep)
			return 0;
		addr_off = offsetof(struct iphdr, daddr);
	}
	if (pkt_set32(p, ETH_HLEN + addr_off, addr, ETH_HLEN + offsetof(struct iphdr, check)))
		return VND_DROP_MALFORMED;
	return VND_FWD_SNAT_FRAGMENT;
}

#endif
