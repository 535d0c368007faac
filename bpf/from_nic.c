/*
 * The VM NIC's receive side, as tc ingress (from_nic) or XDP (from_nic_xdp):
 * SPEC §5 "From the NIC". Frames for a local pod go straight into it; all
 * else reaches the host stack untouched.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/verdict.h"
#include "lib/forward.h"
#include "lib/pull.h"

static __always_inline void nic_handle(void *data, void *data_end, struct vnd_verdict *v)
{
	struct ethhdr *eth = data;
	struct vnd_endpoint *ep;
	struct iphdr *ip;

	verdict_set(v, VND_HOW_PASS, 0, VND_PASS_NIC);
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return;
	ip = ipv4_header(eth, data_end);
	if (!ip)
		return;
	ep = vnd_endpoints.lookup(&ip->daddr);
	/* Reverse SNAT (SPEC §5 NIC step 2) plugs in here. */
	if (!ep)
		return;
	v->metric_ifindex = ep->ifindex;
	v->dir = VND_DIR_TO_POD;
	forward_ipv4(eth, ip, ep->host_mac, ep->pod_mac, VND_HOW_PEER, ep->ifindex,
		     VND_FWD_TO_POD, v);
}

int from_nic(struct __sk_buff *skb)
{
	struct vnd_verdict v = { .metric_ifindex = skb->ifindex, .dir = VND_DIR_NIC };

	tc_pull_headers(skb);
	nic_handle((void *)(long)skb->data, (void *)(long)skb->data_end, &v);
	return tc_finish(skb, &v);
}

int from_nic_xdp(struct xdp_md *ctx)
{
	struct vnd_verdict v = { .metric_ifindex = ctx->ingress_ifindex, .dir = VND_DIR_NIC };

	nic_handle((void *)(long)ctx->data, (void *)(long)ctx->data_end, &v);
	return xdp_finish(ctx, &v);
}

/* On the pod end of a veth when the NIC runs XDP: veth delivers XDP-redirected
 * frames only to a peer that has an XDP program (SPEC §9). */
int pod_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
