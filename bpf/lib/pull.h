/* Making the headers a program reads linear and writable in a tc skb. */
#ifndef VND_PULL_H
#define VND_PULL_H

#include "common.h"

/* Ethernet, IPv4 and a TCP header without options; covers ARP too. Offloaded
 * TCP from pods keeps exactly its headers linear: pulling more would copy
 * payload on every packet. */
#define VND_PULL_COMMON (ETH_HLEN + 40)
/* An ICMP error quoting a packet, IPv4 options on both headers. */
#define VND_PULL_MAX (ETH_HLEN + 60 + 8 + 60 + 8)

static __always_inline void tc_pull(struct __sk_buff *skb, __u32 want)
{
	if (want > skb->len)
		want = skb->len;
	if ((void *)(long)skb->data + want > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, want);
}

static __always_inline void tc_pull_headers(struct __sk_buff *skb)
{
	struct ethhdr *eth;
	struct iphdr *ip;

	tc_pull(skb, VND_PULL_COMMON);
	eth = (void *)(long)skb->data;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > (void *)(long)skb->data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return;
	if (ip->ihl != 5 || ip->protocol == IPPROTO_ICMP)
		tc_pull(skb, VND_PULL_MAX);
}

#endif
