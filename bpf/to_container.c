/*
 * tc egress on the host end of a pod's veth: what the host stack delivers to
 * a pod (the datapath's own bpf_redirect_peer skips this hook, and its XDP
 * redirects do too). Flows from outside the node that arrive this way were
 * routed, and usually translated, by the host: they are remembered
 * (lib/host_flows.h) so that their replies return through the host too. A
 * pod's ingress rate limit polices them (lib/bandwidth.h); the host's own
 * connections pass untouched. Nothing else is changed or dropped here.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/verdict.h"
#include "lib/ipv4.h"
#include "lib/pull.h"
#include "lib/host_flows.h"
#include "lib/bandwidth.h"

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
	struct vnd_verdict v = { .metric_ifindex = skb->ifindex, .dir = VND_DIR_TO_POD,
				  .hook = VND_HOOK_TO_CONTAINER };
	struct vnd_pkt p = { .ctx = skb, .is_xdp = 0 };
	struct vnd_bandwidth *bw;
	struct vnd_endpoint *ep;
	struct ethhdr *eth;
	struct iphdr *ip;
	__be32 pod;
	int reason;

	tc_pull_headers(skb);
	eth = pkt_data(&p);
	if ((void *)(eth + 1) > pkt_end(&p) || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = ipv4_header(eth, pkt_end(&p));
	/* The host's own connections need nothing (their replies are for the host):
	 * neither remembered nor policed. */
	if (!ip || dest_class(ip->saddr) == VND_DEST_HOST)
		return TC_ACT_OK;
	pod = ip->daddr;
	ep = vnd_endpoints.lookup(&pod);
	if (!ep)
		return TC_ACT_OK;
	remember_host_flow(&p, ip, ep);
	bw = bandwidth_of(ep, pod);
	reason = bw ? bandwidth_police(&bw->ingress, skb->len) : 0;
	if (!reason)
		return TC_ACT_OK;
	verdict_drop(&v, reason);
	return tc_finish(skb, &v);
}
