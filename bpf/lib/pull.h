/* Making the headers a program reads linear and writable in a tc skb. */
#ifndef VND_PULL_H
#define VND_PULL_H

#include "common.h"

/* Ethernet plus the longest IPv4 header (with options) or an ARP body. */
#define VND_HEADERS_LEN (ETH_HLEN + 60)

static __always_inline void tc_pull_headers(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 want = skb->len < VND_HEADERS_LEN ? skb->len : VND_HEADERS_LEN;

	if (data + want > data_end)
		bpf_skb_pull_data(skb, want);
}

#endif
