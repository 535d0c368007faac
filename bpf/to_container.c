/*
 * tc egress on the host end of a pod's veth: what the host stack delivers to
 * a pod, and what the datapath sends through this veth's qdisc for a pod
 * with an ingress rate (VND_HOW_POD_QDISC, marked; its bpf_redirect_peer and
 * XDP redirects skip this hook). Flows from outside the node that the host
 * delivers were routed, and usually translated, by the host: they are
 * remembered (lib/host_flows.h) so that their replies return through the
 * host too. They meet the pod's rule set (lib/policy.h); the host's own
 * traffic (kubelet's probes) meets none, but its flow is kept so that the
 * pod's replies pass. Nothing else is dropped and nothing is changed here:
 * the qdisc after this hook keeps a pod's ingress rate (lib/bandwidth.h).
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/verdict.h"
#include "lib/ipv4.h"
#include "lib/pull.h"
#include "lib/host_flows.h"
#include "lib/policy.h"

static __always_inline void remember_host_flow(const struct vnd_pkt *p, struct iphdr *ip,
					       struct vnd_endpoint *ep)
{
	struct vnd_flow_key key;
	__u64 now;

	if (host_flow_key(p, ip, ip->daddr, ip->saddr, 0, &key))
		return;
	now = bpf_ktime_get_ns();
	vnd_host_flows.update(&key, &now);
	if (!(ep->flags & VND_EP_HOST_FLOWS))
		ep->flags |= VND_EP_HOST_FLOWS;  /* racing writers all set the same bit */
}

int to_container(struct __sk_buff *skb)
{
	struct vnd_pkt p = { .ctx = skb, .is_xdp = 0 };
	struct vnd_verdict v = { .metric_ifindex = skb->ifindex, .dir = VND_DIR_TO_POD,
				  .hook = VND_HOOK_TO_CONTAINER };
	struct vnd_endpoint *ep;
	struct ethhdr *eth;
	struct iphdr *ip;
	int err;

	if (tc_take_forwarded(skb))
		return TC_ACT_OK;
	tc_pull_headers(skb);
	eth = pkt_data(&p);
	if ((void *)(eth + 1) > pkt_end(&p) || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = ipv4_header(eth, pkt_end(&p));
	ep = ip ? vnd_endpoints.lookup(&ip->daddr) : NULL;
	if (!ep)
		return TC_ACT_OK;
	/* The host's own connections: their replies are for the host anyway. */
	if (dest_class(ip->saddr) == VND_DEST_HOST) {
		policy_track(&p, ip);
		return TC_ACT_OK;
	}
	err = policy_enforce(&p, ip, VND_POLICY_INBOUND);
	if (err) {
		verdict_drop(&v, err);
		return tc_finish(skb, &v);
	}
	remember_host_flow(&p, ip, ep);
	return TC_ACT_OK;
}
