/* Ethernet header access and MAC rewriting. */
#ifndef VND_ETH_H
#define VND_ETH_H

#include "common.h"

static __always_inline void eth_rewrite(struct ethhdr *eth, const __u8 *src, const __u8 *dst)
{
	mac_copy(eth->h_source, src);
	mac_copy(eth->h_dest, dst);
}

#endif
