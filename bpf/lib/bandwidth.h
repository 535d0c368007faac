/*
 * Pod bandwidth limits (the runtime's ingress and egress rates and bursts).
 * The rates are kept by tbf qdiscs that the control plane installs
 * (vnetdp/shaping.py): queues, so TCP senders slow down instead of losing
 * packets, and the measured rate is the configured one. (Pacing by delivery
 * time needs the fq qdisc, which many kernels, cloud kernels among them, are
 * built without.)
 *
 * Ingress, what a pod receives: a tbf on its host veth. The datapath's
 * shortcut into a pod, bpf_redirect_peer(), skips that qdisc, so traffic
 * for a pod with an ingress rate takes bpf_redirect() out of the host veth
 * instead (VND_HOW_POD_QDISC): from the NIC, reverse-translated replies
 * too, and from pods on this node; XDP cannot reach a qdisc and passes such
 * frames on to tc. What the host stack delivers passes the qdisc anyway.
 *
 * Egress, what a pod sends: a tbf on the pod's own end of the veth, where
 * the pod's sockets feel the queue. That end is inside the pod: a pod
 * allowed to change its qdiscs could remove it, so from_container also
 * polices the pod's egress, a GCRA (the virtual-scheduling form of a token
 * bucket, struct vnd_rate) at the same rate with twice the shaper's burst:
 * traffic the shaper let through conforms even when the veth's backlog
 * bunches it, and a pod without its shaper still gets no more than its
 * rate. next_ns is the theoretical arrival time, burst_ns the burst as time
 * at the rate. A packet of len bytes conforms when tat = max(next_ns, now)
 * lies at most 2 * burst_ns ahead of now; next_ns then becomes
 * tat + len / rate. Otherwise it is dropped and counted VND_DROP_RATE_LIMIT,
 * and the clock stays. Racing CPUs may each read the same next_ns and one's
 * advance is then lost: a little more than the rate may pass, never less.
 * Lengths are the frame's from the Ethernet header on, as tbf counts them.
 *
 * Pods without the VND_EP_BANDWIDTH flag pay no lookup.
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

/* Whether traffic into the pod must pass its host veth's qdisc (a tbf). */
static __always_inline int bandwidth_ingress_shaped(const struct vnd_endpoint *ep, __be32 addr)
{
	struct vnd_bandwidth *bw = bandwidth_of(ep, addr);

	return bw && bw->ingress.bytes_per_s;
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
	if (tat - now > 2 * r->burst_ns)
		return VND_DROP_RATE_LIMIT;
	r->next_ns = tat + (__u64)len * VND_NSEC_PER_SEC / rate;
	return 0;
}

#endif
