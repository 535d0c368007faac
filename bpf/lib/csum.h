/* Incremental Internet checksum updates (RFC 1624), usable from tc and XDP. */
#ifndef VND_CSUM_H
#define VND_CSUM_H

#include "common.h"

static __always_inline __u16 vnd_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* *sum covers a 16-bit field that changes from old to new. */
static __always_inline void vnd_csum_replace16(__sum16 *sum, __be16 old, __be16 new)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~old;
	s += (__u16)new;
	*sum = ~vnd_csum_fold(s);
}

/* *sum covers a 32-bit field (an IPv4 address) that changes from old to new. */
static __always_inline void vnd_csum_replace32(__sum16 *sum, __be32 old, __be32 new)
{
	vnd_csum_replace16(sum, (__be16)old, (__be16)new);
	vnd_csum_replace16(sum, (__be16)(old >> 16), (__be16)(new >> 16));
}

#endif
