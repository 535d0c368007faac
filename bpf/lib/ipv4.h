/* IPv4 header validation and TTL handling, on directly accessed packet data. */
#ifndef VND_IPV4_H
#define VND_IPV4_H

#include "common.h"
#include "csum.h"
#include "pkt.h"
#include "reasons.h"

#define VND_IP_MF 0x2000        /* more fragments */
#define VND_IP_OFFSET 0x1fff    /* fragment offset, in 8-byte units */
#define VND_TCP_FIN 0x01        /* TCP flags, in the header's 14th byte */
#define VND_TCP_SYN 0x02
#define VND_TCP_RST 0x04
#define VND_TCP_ACK 0x10

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
 * Whether the payload of ip starts with a transport header: unfragmented
 * packets and first fragments. A later fragment's payload is data, however
 * much it looks like a header (SPEC §5), and is never parsed as one.
 */
static __always_inline int ipv4_has_l4(const struct iphdr *ip)
{
	return !(ip->frag_off & bpf_htons(VND_IP_OFFSET));
}

/* Which part of a datagram an IPv4 packet is (ipv4_fragment()). */
enum vnd_frag {
	VND_FRAG_NONE = 0,      /* unfragmented */
	VND_FRAG_FIRST = 1,     /* offset 0, more fragments: carries the transport header */
	VND_FRAG_LATER = 2,     /* any other offset: data only */
};

static __always_inline int ipv4_fragment(const struct iphdr *ip)
{
	if (!ipv4_has_l4(ip))
		return VND_FRAG_LATER;
	return ip->frag_off & bpf_htons(VND_IP_MF) ? VND_FRAG_FIRST : VND_FRAG_NONE;
}

/*
 * Whether a destination is one no packet of a pod may go to: "this network"
 * 0.0.0.0/8, loopback 127.0.0.0/8, multicast 224.0.0.0/4, reserved
 * 240.0.0.0/4 and the limited broadcast 255.255.255.255 within it.
 */
static __always_inline int ipv4_martian_dst(__be32 daddr)
{
	__u32 first = bpf_ntohl(daddr) >> 24;

	return first == 0 || first == 127 || first >= 224;
}

/*
 * The length of the IPv4 packet ip, or 0 when tot_len is below its header
 * or past the end of the frame (a frame longer than tot_len is padded: that
 * is fine). At tc the frame is skb->len, paged data included. A GSO packet
 * of over 64 KiB (BIG TCP) carries tot_len 0 and is as long as its frame,
 * as the kernel's iph_totlen() has it.
 */
static __always_inline __u32 ipv4_len(const struct vnd_pkt *p, const struct iphdr *ip)
{
	__u32 frame = pkt_len(p) - ETH_HLEN;
	__u32 len = bpf_ntohs(ip->tot_len);

	if (!len && ip->protocol == IPPROTO_TCP && pkt_gso(p))
		len = frame;
	if (len < ip->ihl * 4 || len > frame)
		return 0;
	return len;
}

/*
 * 0, or VND_DROP_MALFORMED when the lengths of the IPv4 packet ip do not
 * hold together: tot_len (ipv4_len()) and, when it has a transport header
 * (ipv4_has_l4()), a TCP header of under 20 bytes or with a data offset
 * below 5 or past the packet, a UDP header of under 8 bytes or a UDP length
 * below 8 or (unfragmented) past the packet, an ICMP header of under 8
 * bytes. Parsers of the transport header (lib/snat.h) rely on this having
 * been checked: headers then lie within tot_len, never in padding.
 */
static __always_inline int ipv4_check(const struct vnd_pkt *p, struct iphdr *ip)
{
	__u32 len = ipv4_len(p, ip), hlen = ip->ihl * 4, l4_len, field;
	__u8 *th = (void *)ip + hlen;

	if (!len)
		return VND_DROP_MALFORMED;
	if (!ipv4_has_l4(ip))
		return 0;
	l4_len = len - hlen;
	if (ip->protocol == IPPROTO_TCP) {
		if (l4_len < sizeof(struct tcphdr) || (void *)(th + 13) > pkt_end(p))
			return VND_DROP_MALFORMED;
		field = (th[12] >> 4) * 4;      /* data offset */
		if (field < sizeof(struct tcphdr) || field > l4_len)
			return VND_DROP_MALFORMED;
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)th;

		if (l4_len < sizeof(*udp) || (void *)(udp + 1) > pkt_end(p))
			return VND_DROP_MALFORMED;
		field = bpf_ntohs(udp->len);
		/* A first fragment's UDP length covers the later fragments too. */
		if (field < sizeof(*udp) || (field > l4_len && !(ip->frag_off & bpf_htons(VND_IP_MF))))
			return VND_DROP_MALFORMED;
	} else if (ip->protocol == IPPROTO_ICMP) {
		if (l4_len < sizeof(struct icmphdr))
			return VND_DROP_MALFORMED;
	}
	return 0;
}

/*
 * The source and destination ports of a TCP or UDP packet that has its
 * transport header, as two network-order words; NULL for other packets.
 * After ipv4_check() they also lie within tot_len.
 */
static __always_inline __be16 *ipv4_ports(const struct vnd_pkt *p, struct iphdr *ip)
{
	__be16 *ports = (void *)ip + ip->ihl * 4;

	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return NULL;
	if (!ipv4_has_l4(ip) || (void *)(ports + 2) > pkt_end(p))
		return NULL;
	return ports;
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
