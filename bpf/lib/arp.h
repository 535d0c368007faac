/* Answering a pod's ARP requests on the host, without leaving the node. */
#ifndef VND_ARP_H
#define VND_ARP_H

#include "common.h"

struct vnd_arp {
	struct arphdr hdr;
	__u8 sha[6];
	__be32 sip;
	__u8 tha[6];
	__be32 tip;
} __attribute__((packed));

/* The ARP body after eth if it is an Ethernet/IPv4 ARP, else NULL. */
static __always_inline struct vnd_arp *arp_header(struct ethhdr *eth, void *data_end)
{
	struct vnd_arp *arp = (void *)(eth + 1);

	if ((void *)(arp + 1) > data_end)
		return NULL;
	if (arp->hdr.ar_hrd != bpf_htons(ARPHRD_ETHER) ||
	    arp->hdr.ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->hdr.ar_hln != 6 || arp->hdr.ar_pln != 4)
		return NULL;
	return arp;
}

/* Turn a request into the reply "tip is at mac", in place. */
static __always_inline void arp_make_reply(struct ethhdr *eth, struct vnd_arp *arp,
					   const __u8 *mac)
{
	__be32 tip = arp->tip;

	arp->hdr.ar_op = bpf_htons(ARPOP_REPLY);
	mac_copy(arp->tha, arp->sha);
	arp->tip = arp->sip;
	mac_copy(arp->sha, mac);
	arp->sip = tip;
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, mac);
}

#endif
