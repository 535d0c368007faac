/*
 * Pod bandwidth limits (the runtime's ingress and egress rates), paced by
 * earliest departure time as the mature eBPF datapaths do: each limited
 * direction of a pod has a clock (struct vnd_rate). A packet leaves at the
 * later of now and that clock (and of a delivery time its sender already
 * gave it); the clock moves on by the packet's length at the rate. The
 * departure time goes into skb->tstamp as a CLOCK_MONOTONIC delivery time,
 * which the fq qdisc of the device the packet leaves by honours: the NIC for
 * a pod's egress to the VNet and beyond; the receiver's host veth for
 * pod-to-pod traffic and for a pod's ingress, which therefore take
 * bpf_redirect() through that qdisc (VND_HOW_POD_QDISC), not
 * bpf_redirect_peer() past it. A pod's ingress is paced at that veth's tc
 * egress (to_container), so the host stack's deliveries are paced too; the
 * host's own connections to a pod, and what a pod sends to the host stack,
 * are not. Without fq there, delivery times are ignored: nothing is paced.
 *
 * No burst: an idle clock restarts at now. A packet that would leave beyond
 * the horizon is dropped and counted, so a sender above its rate sees drops
 * (and TCP backs off) rather than an ever longer queue. tc only: XDP frames
 * have no delivery time (from_nic.c passes them on to tc).
 */
#ifndef VND_BANDWIDTH_H
#define VND_BANDWIDTH_H

#include "common.h"
#include "maps.h"
#include "reasons.h"

#ifndef VND_RATE_HORIZON_NS
#define VND_RATE_HORIZON_NS 2000000000ULL  /* fq's own horizon is 10 s by default */
#endif
#define VND_NSEC_PER_SEC 1000000000ULL

/* The pod's limits: looked up only for pods the control plane flagged. */
static __always_inline struct vnd_bandwidth *bandwidth_of(const struct vnd_endpoint *ep, __be32 addr)
{
	if (!(ep->flags & VND_EP_BANDWIDTH))
		return NULL;
	return vnd_bandwidth.lookup(&addr);
}

/* Whether traffic into the pod is paced: it must then pass its host veth's qdisc. */
static __always_inline int bandwidth_ingress_limited(const struct vnd_endpoint *ep, __be32 addr)
{
	struct vnd_bandwidth *bw = bandwidth_of(ep, addr);

	return bw && bw->ingress.bytes_per_s;
}

/*
 * Give the packet its departure time at the rate r, which moves r's clock
 * on: 0, or VND_DROP_RATE_HORIZON (the clock stays) when that time lies
 * beyond the horizon. An unlimited direction leaves the packet as it is.
 * Racing CPUs may each take the same clock value: pacing blurs a little.
 */
static __always_inline int bandwidth_pace(struct __sk_buff *skb, struct vnd_rate *r)
{
	__u64 rate = r->bytes_per_s;
	__u64 now = bpf_ktime_get_ns();
	__u64 t = r->next_ns;

	if (!rate)
		return 0;
	if (skb->tstamp_type == BPF_SKB_TSTAMP_DELIVERY_MONO && skb->tstamp > t)
		t = skb->tstamp;
	if (t < now)
		t = now;
	if (t - now > VND_RATE_HORIZON_NS)
		return VND_DROP_RATE_HORIZON;
	r->next_ns = t + (__u64)skb->len * VND_NSEC_PER_SEC / rate;
	bpf_skb_set_tstamp(skb, t, BPF_SKB_TSTAMP_DELIVERY_MONO);
	return 0;
}

#endif
