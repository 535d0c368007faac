/* Kernel headers and small helpers every vnetdp program includes. */
#ifndef VND_COMMON_H
#define VND_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#ifndef VND_MAPS_DIR
#error "VND_MAPS_DIR must name the bpffs directory that holds the pinned maps"
#endif

#define ETH_ALEN_ 6
#define VND_EEXIST 17           /* what a map insert of a key already there returns, negated */

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ETH_ALEN_);
}

/* Byte-wise: clang may turn memcmp into a call, which BPF cannot make. */
static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) |
		(a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

#endif
