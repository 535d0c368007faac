/* Ethernet header access and MAC rewriting. */
#ifndef VND_ETH_H
#define VND_ETH_H

#include "common.h"
#include "pkt.h"

static __always_inline void eth_rewrite(struct ethhdr *eth, const __u8 *src, const __u8 *dst)
{
	mac_copy(eth->h_source, src);
	mac_copy(eth->h_dest, dst);
}

/*
 * Whether the frame carries a VLAN tag (802.1Q or 802.1ad, VLAN 0 priority
 * tags included). At XDP a tag can only be in band, as eth->h_proto. At tc
 * the kernel has usually taken the outer tag out already (the NIC's VLAN
 * offload, or the stack's untagging before tc ingress) into skb->vlan_*,
 * leaving eth->h_proto the inner type; a second tag is then in band.
 */
static __always_inline int eth_vlan_tagged(const struct vnd_pkt *p, const struct ethhdr *eth)
{
	if (!p->is_xdp && ((struct __sk_buff *)p->ctx)->vlan_present)
		return 1;
	return eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD);
}

#endif
