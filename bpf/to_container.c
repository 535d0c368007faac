/*
 * tc egress on the host end of a pod's veth: what the host stack delivers to
 * a pod (the datapath's own bpf_redirect_peer skips this hook). Flows from
 * outside the node that arrive this way were routed, and usually translated,
 * by the host: they are remembered (lib/host_flows.h) so that their replies
 * return through the host too. Nothing is changed or dropped here.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/ipv4.h"
#include "lib/pull.h"
#include "lib/host_flows.h"

int to_container(struct __sk_buff *skb)
{
	struct vnd_pkt p = { .ctx = skb, .is_xdp = 0 };
	struct vnd_endpoint *ep;
	struct vnd_flow_key key;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u64 now;

	tc_pull_headers(skb);
	eth = pkt_data(&p);
	if ((void *)(eth + 1) > pkt_end(&p) || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = ipv4_header(eth, pkt_end(&p));
	/* The host's own connections need nothing: their replies are for the host. */
	if (!ip || dest_class(ip->saddr) == VND_DEST_HOST)
		return TC_ACT_OK;
	ep = vnd_endpoints.lookup(&ip->daddr);
	if (!ep || host_flow_key(&p, ip, ip->daddr, ip->saddr, 0, &key))
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	vnd_host_flows.update(&key, &now);
	if (!(ep->flags & VND_EP_HOST_FLOWS))
		ep->flags |= VND_EP_HOST_FLOWS;  /* racing writers all set the same bit */
	return TC_ACT_OK;
}
