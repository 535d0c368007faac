/*
 * Pod bandwidth limits (the runtime's ingress and egress rates and bursts),
 * policed: a packet above a pod's rate is dropped where the datapath handles
 * it, so no qdisc is needed. (Pacing by skb delivery time needs the fq
 * qdisc, which many kernels, cloud kernels among them, are built without:
 * delivery times are then ignored and nothing would be limited.)
 *
 * Each limited direction of a pod is a GCRA, the virtual-scheduling form of
 * a token bucket (struct vnd_rate): next_ns is the theoretical arrival time,
 * burst_ns the tolerance, the burst in bytes as time at the rate. A packet
 * of len bytes at now conforms when tat = max(next_ns, now) lies at most
 * burst_ns ahead of now; next_ns then becomes tat + len / rate. Otherwise it
 * is dropped and counted VND_DROP_RATE_LIMIT, and the clock stays. So an
 * idle pod may send a burst at once (and one packet more, whatever its
 * size: a GSO aggregate counts whole), then its rate; a sender above it
 * sees drops, and TCP backs off. The control plane picks the burst
 * (vnetdp/datapath/maps.py: by default large enough for TCP to reach the
 * rate).
 *
 * Where: a pod's egress in from_container, for every destination (the VNet,
 * beyond it translated or not, a pod on this node, the host stack); its
 * ingress where packets enter it: from_nic before bpf_redirect_peer() and
 * from_nic_xdp before its redirect (translated replies too), from_container
 * for a pod on this node (after the sender's egress, which a packet the
 * receiver then drops has used; such a drop is counted for the receiver),
 * and to_container, the host veth's tc egress, for what the host stack
 * delivers, the host's own connections to the pod excepted. The datapath's
 * own redirects into a pod (bpf_redirect_peer(), XDP's redirect) skip that
 * hook: nothing is policed twice. Only packets otherwise delivered are
 * charged: a drop for another reason costs no rate. Lengths are the
 * frame's from the Ethernet header on.
 *
 * Racing CPUs may each read the same next_ns and one's advance is then lost:
 * a little more than the rate may pass, never less. Pods without the
 * VND_EP_BANDWIDTH flag pay no lookup.
 */
#ifndef VND_BANDWIDTH_H
#define VND_BANDWIDTH_H

#include "common.h"
#include "maps.h"
#include "reasons.h"

#define VND_NSEC_PER_SEC 1000000000ULL

/* The pod's limits: looked up only for pods the control plane flagged. */
static __always_inline struct vnd_bandwidth *bandwidth_of(const struct vnd_endpoint *ep, __be32 addr)
{
	if (!(ep->flags & VND_EP_BANDWIDTH))
		return NULL;
	return vnd_bandwidth.lookup(&addr);
}

/*
 * GCRA: 0 when a packet of len bytes conforms to r (r's clock moves on by
 * its time at the rate), VND_DROP_RATE_LIMIT when it does not (the clock
 * stays). An unlimited direction admits everything and keeps no clock.
 */
static __always_inline int bandwidth_police(struct vnd_rate *r, __u32 len)
{
	__u64 rate = r->bytes_per_s;
	__u64 now, tat;

	if (!rate)
		return 0;
	now = bpf_ktime_get_ns();
	tat = r->next_ns;
	if (tat < now)
		tat = now;
	if (tat - now > r->burst_ns)
		return VND_DROP_RATE_LIMIT;
	r->next_ns = tat + (__u64)len * VND_NSEC_PER_SEC / rate;
	return 0;
}

#endif
