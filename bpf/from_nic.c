/*
 * The VM NIC's receive side, as tc ingress (from_nic) or XDP (from_nic_xdp):
 * SPEC §5 "From the NIC". Frames for a local pod go straight into it,
 * replies of translated flows (their fragments, and ICMP errors about them)
 * are translated back and go into their pod; all else reaches the host
 * stack untouched. Frames for a pod with an ingress rate go through its
 * host veth instead, whose qdisc keeps the rate (lib/bandwidth.h). What a
 * pod receives meets its rule set, after any reverse translation
 * (lib/policy.h).
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/verdict.h"
#include "lib/forward.h"
#include "lib/pull.h"
#include "lib/snat.h"
#include "lib/bandwidth.h"
#include "lib/policy.h"

/*
 * For the primary IP: the reason code of a reverse translation, or 0. A
 * malformed packet is dropped before it is parsed for one.
 */
static __always_inline int nic_reverse_snat(struct vnd_pkt *p, struct iphdr *ip,
					    struct vnd_endpoint **ep)
{
	struct vnd_node *node = node_config();
	int reason;

	if (!node || ip->daddr != node->primary_ip)
		return 0;
	reason = ipv4_check(p, ip);
	if (!reason)
		reason = snat_reply(p, ip, ep);
	return reason ? reason : snat_icmp_error(p, ip, ep);
}

static __always_inline void nic_handle(struct vnd_pkt *p, struct vnd_verdict *v)
{
	__u32 nic = v->metric_ifindex;
	struct ethhdr *eth = pkt_data(p);
	__u8 how = VND_HOW_PEER;
	struct vnd_endpoint *ep;
	struct iphdr *ip;
	int reason, err;

	verdict_set(v, VND_HOW_PASS, 0, VND_PASS_NIC);
	/* Tagged frames are the host's (its VLAN devices), never a pod's. */
	if ((void *)(eth + 1) > pkt_end(p) || eth_vlan_tagged(p, eth) ||
	    eth->h_proto != bpf_htons(ETH_P_IP))
		return;
	ip = ipv4_header(eth, pkt_end(p));
	if (!ip)
		return;
	ep = vnd_endpoints.lookup(&ip->daddr);
	if (ep) {
		reason = ipv4_check(p, ip);
		if (!reason)
			reason = VND_FWD_TO_POD;
	} else {
		reason = nic_reverse_snat(p, ip, &ep);
		if (!reason)
			return;
	}
	if (ep) {
		v->metric_ifindex = ep->ifindex;
		v->dir = VND_DIR_TO_POD;
	}
	if (reason >= VND_DROP_MIN) {
		verdict_drop(v, reason);
		return;
	}
	if (reason != VND_FWD_TO_POD) {
		ip = reread_ipv4(p, &eth, v);
		if (!ip)
			return;
	}
	err = policy_enforce(p, ip, VND_POLICY_INBOUND);
	if (err) {
		verdict_drop(v, err);
		return;
	}
	if (bandwidth_ingress_shaped(ep, ip->daddr)) {
		if (p->is_xdp) {
			/* Up to tc ingress (from_nic), translated but with its TTL
			 * and MACs left to tc. Counted for the NIC: the pod's
			 * count is tc's. */
			v->metric_ifindex = nic;
			v->dir = VND_DIR_NIC;
			verdict_set(v, VND_HOW_PASS, 0, VND_PASS_XDP_SHAPED);
			return;
		}
		how = VND_HOW_POD_QDISC;
		if (reason == VND_FWD_TO_POD)
			reason = VND_FWD_TO_POD_SHAPED;
	}
	forward_ipv4(eth, ip, ep->host_mac, ep->pod_mac, how, ep->ifindex, reason, v);
}

int from_nic(struct __sk_buff *skb)
{
	struct vnd_verdict v = { .metric_ifindex = skb->ifindex, .dir = VND_DIR_NIC,
				  .hook = VND_HOOK_FROM_NIC };
	struct vnd_pkt p = { .ctx = skb, .is_xdp = 0 };

	tc_pull_headers(skb);
	nic_handle(&p, &v);
	return tc_finish(skb, &v);
}

int from_nic_xdp(struct xdp_md *ctx)
{
	struct vnd_verdict v = { .metric_ifindex = ctx->ingress_ifindex, .dir = VND_DIR_NIC,
				  .hook = VND_HOOK_FROM_NIC_XDP };
	struct vnd_pkt p = { .ctx = ctx, .is_xdp = 1 };

	nic_handle(&p, &v);
	return xdp_finish(ctx, &v);
}

/* On the pod end of a veth when the NIC runs XDP: veth delivers XDP-redirected
 * frames only to a peer that has an XDP program (SPEC §9). */
int pod_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
