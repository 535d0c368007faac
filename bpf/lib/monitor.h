/*
 * Datapath events for `vnetdp monitor` (SPEC §10): every drop, and on
 * request a trace of every packet forwarded, as struct vnd_event records in
 * the vnd_events ring buffer. The switch (vnd_monitor) is read once per
 * verdict; only when it asks for this verdict are the headers read again
 * and a record written. A full ring buffer loses the event (counted in the
 * switch's entry), it never waits.
 */
#ifndef VND_MONITOR_H
#define VND_MONITOR_H

#include "common.h"
#include "maps.h"
#include "pkt.h"
#include "ipv4.h"
#include "arp.h"
#include "reasons.h"

/* The switch's entry when it asks for an event of a verdict with this
 * reason, else NULL. This is all a packet pays while nobody monitors. */
static __always_inline struct vnd_monitor *monitor_wants(__u8 reason)
{
	__u32 zero = 0, want = VND_MONITOR_TRACE;
	struct vnd_monitor *mon = vnd_monitor.lookup(&zero);

	if (!mon || !mon->flags)
		return NULL;
	if (reason >= VND_DROP_MIN)
		want = VND_MONITOR_DROPS;
	else if (reason == VND_PASS_NIC)
		want = VND_MONITOR_TRACE | VND_MONITOR_NIC_PASS;
	return (mon->flags & want) == want ? mon : NULL;
}

/* Addresses, protocol and ports of the frame as it is now, into e. */
static __always_inline void monitor_headers(const struct vnd_pkt *p, struct vnd_event *e)
{
	struct ethhdr *eth = pkt_data(p);
	struct vnd_arp *arp;
	struct iphdr *ip;
	__u8 *l4;
	__u32 hlen;

	if ((void *)(eth + 1) > pkt_end(p))
		return;
	e->ethertype = eth->h_proto;
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		arp = arp_header(eth, pkt_end(p));
		if (arp) {
			e->saddr = arp->sip;
			e->daddr = arp->tip;
		}
		return;
	}
	ip = (void *)(eth + 1);
	if (eth->h_proto != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > pkt_end(p))
		return;
	e->proto = ip->protocol;
	e->saddr = ip->saddr;
	e->daddr = ip->daddr;
	hlen = ip->ihl * 4;
	l4 = (void *)ip + hlen;
	if (hlen < sizeof(*ip) || !ipv4_has_l4(ip) || (void *)(l4 + 4) > pkt_end(p))
		return;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		e->sport = *(__be16 *)l4;
		e->dport = *(__be16 *)(l4 + 2);
	} else if (ip->protocol == IPPROTO_ICMP) {
		e->sport = bpf_htons(l4[0]);    /* type */
		e->dport = bpf_htons(l4[1]);    /* code */
	}
}

/* Complete e with the time and the frame's headers and write it. */
static __always_inline void monitor_write(struct vnd_monitor *mon, const struct vnd_pkt *p,
					  struct vnd_event *e)
{
	e->ts_ns = bpf_ktime_get_ns();
	monitor_headers(p, e);
	if (vnd_events.ringbuf_output(e, sizeof(*e), 0))
		__sync_fetch_and_add(&mon->lost, 1);
}

#endif
