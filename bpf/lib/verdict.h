/*
 * Where a handler sends a packet, and the one place that turns that into a
 * counter update, a monitor event (when asked for) and a tc or XDP action.
 * Handlers fill a struct vnd_verdict and return; only program entry points
 * call tc_finish()/xdp_finish().
 */
#ifndef VND_VERDICT_H
#define VND_VERDICT_H

#include "maps.h"
#include "monitor.h"
#include "pkt.h"
#include "reasons.h"

enum vnd_how {
	VND_HOW_DROP = 0,
	VND_HOW_PASS = 1,       /* to the host stack */
	VND_HOW_EGRESS = 2,     /* bpf_redirect(): out of ifindex */
	VND_HOW_PEER = 3,       /* bpf_redirect_peer(): into ifindex's peer */
	VND_HOW_POD_QDISC = 4,  /* bpf_redirect(), marked: out of a pod's host veth, through its qdisc */
};

/*
 * skb->mark of the packets the datapath itself sends out of a pod's host
 * veth (VND_HOW_POD_QDISC): to_container, on that hook, tells them from the
 * host stack's deliveries by it, and clears it. Nothing between the
 * redirect and to_container reads marks (no routing, no netfilter), and the
 * pod never sees it: crossing into the pod's namespace scrubs it.
 */
#define VND_MARK_FORWARDED 0x766e6470   /* "vndp" */

struct vnd_verdict {
	__u32 ifindex;          /* redirect target */
	__u32 metric_ifindex;   /* whose counters move */
	__u8 how;               /* enum vnd_how */
	__u8 reason;            /* enum vnd_reason */
	__u8 dir;               /* enum vnd_dir */
	__u8 hook;              /* enum vnd_hook: the program, for monitor events */
};

static __always_inline void verdict_set(struct vnd_verdict *v, __u8 how,
					 __u32 ifindex, __u8 reason)
{
	v->how = how;
	v->ifindex = ifindex;
	v->reason = reason;
}

static __always_inline void verdict_drop(struct vnd_verdict *v, __u8 reason)
{
	verdict_set(v, VND_HOW_DROP, 0, reason);
}

static __always_inline void metrics_count(const struct vnd_verdict *v, __u32 bytes)
{
	struct vnd_metrics_key key = {
		.ifindex = v->metric_ifindex,
		.dir = v->dir,
		.reason = v->reason,
	};
	struct vnd_metrics_val zero = {};
	struct vnd_metrics_val *val = vnd_metrics.lookup_or_try_init(&key, &zero);

	if (val) {
		val->packets += 1;
		val->bytes += bytes;
	}
}

/* An event of this verdict into the ring buffer, when the monitor asks for one. */
static __always_inline void monitor_verdict(const struct vnd_pkt *p, const struct vnd_verdict *v,
					    __u32 len)
{
	struct vnd_monitor *mon = monitor_wants(v->reason);
	struct vnd_event e;

	if (!mon)
		return;
	e = (struct vnd_event){
		.ifindex = v->metric_ifindex,
		.out_ifindex = v->how >= VND_HOW_EGRESS ? v->ifindex : 0,
		.len = len,
		.hook = v->hook,
		.dir = v->dir,
		.reason = v->reason,
	};
	monitor_write(mon, p, &e);
}

static __always_inline void trace_redirect(const struct vnd_verdict *v)
{
#ifdef VND_TEST_TRACE
	__u32 zero = 0;
	struct vnd_redirect_trace t = { .ifindex = v->ifindex, .how = v->how };

	vnd_trace.update(&zero, &t);
#endif
}

static __always_inline int tc_finish(struct __sk_buff *skb, const struct vnd_verdict *v)
{
	struct vnd_pkt p = { .ctx = skb, .is_xdp = 0 };

	metrics_count(v, skb->len);
	monitor_verdict(&p, v, skb->len);
	trace_redirect(v);
	/* An if chain, not a switch: clang turns a switch over helper calls
	 * into a table of helper pointers and an indirect call BPF cannot make. */
	if (v->how == VND_HOW_PASS)
		return TC_ACT_OK;
	if (v->how == VND_HOW_EGRESS)
		return bpf_redirect(v->ifindex, 0);
	if (v->how == VND_HOW_PEER)
		return bpf_redirect_peer(v->ifindex, 0);
	if (v->how == VND_HOW_POD_QDISC) {
		skb->mark = VND_MARK_FORWARDED;
		return bpf_redirect(v->ifindex, 0);
	}
	return TC_ACT_SHOT;
}

/* Whether the datapath sent this packet out of this pod's host veth
 * (VND_HOW_POD_QDISC); the mark goes. */
static __always_inline int tc_take_forwarded(struct __sk_buff *skb)
{
	if (skb->mark != VND_MARK_FORWARDED)
		return 0;
	skb->mark = 0;
	return 1;
}

static __always_inline int xdp_finish(struct xdp_md *ctx, const struct vnd_verdict *v)
{
	struct vnd_pkt p = { .ctx = ctx, .is_xdp = 1 };

	metrics_count(v, (__u32)(ctx->data_end - ctx->data));
	monitor_verdict(&p, v, pkt_len(&p));
	trace_redirect(v);
	if (v->how == VND_HOW_PASS)
		return XDP_PASS;
	/* XDP has no peer redirect: transmitting on a veth delivers to its peer.
	 * Nor a qdisc: nic_handle() passes shaped pods' frames on to tc. */
	if (v->how == VND_HOW_EGRESS || v->how == VND_HOW_PEER)
		return bpf_redirect(v->ifindex, 0);
	return XDP_DROP;
}

#endif
