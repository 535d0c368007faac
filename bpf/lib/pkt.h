/*
 * Rewriting header fields of a packet in place, from tc or XDP.
 *
 * Fields are named by their offset from the start of the frame (computed
 * from header lengths, so the verifier knows its bounds), and a write never
 * depends on pointers that a helper call may have invalidated. tc
 * programs pass their skb: TCP/UDP checksums then go through
 * bpf_l4_csum_replace(), which knows CHECKSUM_PARTIAL (offloaded packets
 * from pods) and keeps CHECKSUM_COMPLETE valid. XDP frames carry complete
 * checksums, which are updated by hand.
 */
#ifndef VND_PKT_H
#define VND_PKT_H

#include "common.h"
#include "csum.h"

/* The packet of a tc or an XDP program. is_xdp is a constant in each
 * program, so only one side of every test below is compiled in. The bounds
 * are read afresh at each use, never kept: helpers move them, and clang
 * mangles packet pointers kept in a struct beyond what the verifier follows. */
struct vnd_pkt {
	void *ctx;              /* struct __sk_buff * or struct xdp_md * */
	int is_xdp;
};

/* The compiler barrier makes every use load the bounds anew: otherwise clang
 * merges the 32-bit loads of several paths and widens the merged value with
 * shifts, which the verifier refuses on packet pointers. */
static __always_inline void *pkt_data(const struct vnd_pkt *p)
{
	asm volatile("" ::: "memory");
	if (p->is_xdp)
		return (void *)(long)((struct xdp_md *)p->ctx)->data;
	return (void *)(long)((struct __sk_buff *)p->ctx)->data;
}

static __always_inline void *pkt_end(const struct vnd_pkt *p)
{
	asm volatile("" ::: "memory");
	if (p->is_xdp)
		return (void *)(long)((struct xdp_md *)p->ctx)->data_end;
	return (void *)(long)((struct __sk_buff *)p->ctx)->data_end;
}

/* The frame's length from the Ethernet header on; at tc skb->len, which
 * counts data not linear at pkt_data() too. */
static __always_inline __u32 pkt_len(const struct vnd_pkt *p)
{
	if (p->is_xdp)
		return pkt_end(p) - pkt_data(p);
	return ((struct __sk_buff *)p->ctx)->len;
}

/* Whether the packet is a GSO aggregate of several (tc only: XDP sees wire frames). */
static __always_inline int pkt_gso(const struct vnd_pkt *p)
{
	return !p->is_xdp && ((struct __sk_buff *)p->ctx)->gso_size;
}

/* The 2-byte field at off, or NULL when it lies outside the packet. */
static __always_inline __be16 *pkt_u16(const struct vnd_pkt *p, __u32 off)
{
	__be16 *field = pkt_data(p) + off;

	return (void *)(field + 1) > pkt_end(p) ? NULL : field;
}

static __always_inline __be32 *pkt_u32(const struct vnd_pkt *p, __u32 off)
{
	__be32 *field = pkt_data(p) + off;

	return (void *)(field + 1) > pkt_end(p) ? NULL : field;
}

/* Fold a 2-byte change into the plain checksum at csum_off (IPv4 header, ICMP). */
static __always_inline int pkt_csum16(struct vnd_pkt *p, __u32 csum_off, __be16 old, __be16 new)
{
	__sum16 *sum = pkt_u16(p, csum_off);

	if (!sum)
		return -1;
	vnd_csum_replace16(sum, old, new);
	return 0;
}

/* Set the 2-byte field at off and fold the change into the checksum at csum_off. */
static __always_inline int pkt_set16(struct vnd_pkt *p, __u32 off, __be16 new, __u32 csum_off)
{
	__be16 *field = pkt_u16(p, off);
	__be16 old;

	if (!field)
		return -1;
	old = *field;
	*field = new;
	return pkt_csum16(p, csum_off, old, new);
}

/* Fold a 4-byte change into the plain checksum at csum_off. */
static __always_inline int pkt_csum32(struct vnd_pkt *p, __u32 csum_off, __be32 old, __be32 new)
{
	__sum16 *sum = pkt_u16(p, csum_off);

	if (!sum)
		return -1;
	vnd_csum_replace32(sum, old, new);
	return 0;
}

/* Set the 4-byte field at off and fold the change into the checksum at csum_off. */
static __always_inline int pkt_set32(struct vnd_pkt *p, __u32 off, __be32 new, __u32 csum_off)
{
	__be32 *field = pkt_u32(p, off);
	__be32 old;

	if (!field)
		return -1;
	old = *field;
	*field = new;
	return pkt_csum32(p, csum_off, old, new);
}

#define VND_CSUM_MANGLED_0 ((__sum16)0xffff)

/*
 * Fold a change of size bytes (2, or 4 with BPF_F_PSEUDO_HDR for an address
 * in the pseudo-header) into the TCP/UDP checksum at csum_off. With
 * BPF_F_MARK_MANGLED_0 (UDP) a zero checksum means "none" and stays zero.
 */
static __always_inline int pkt_l4_csum(struct vnd_pkt *p, __u32 csum_off, __be32 old,
				       __be32 new, __u64 flags)
{
	__sum16 *sum;

	if (!p->is_xdp)
		return bpf_l4_csum_replace(p->ctx, csum_off, old, new, flags);
	sum = pkt_u16(p, csum_off);
	if (!sum)
		return -1;
	if ((flags & BPF_F_MARK_MANGLED_0) && !*sum)
		return 0;
	if ((flags & BPF_F_HDR_FIELD_MASK) == 4)
		vnd_csum_replace32(sum, old, new);
	else
		vnd_csum_replace16(sum, (__be16)old, (__be16)new);
	if ((flags & BPF_F_MARK_MANGLED_0) && !*sum)
		*sum = VND_CSUM_MANGLED_0;
	return 0;
}

#endif
