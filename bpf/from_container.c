/*
 * tc ingress on the host end of a pod's veth: every frame a pod sends.
 * SPEC §5 "From a pod": anti-spoofing, ARP answered locally, pod-to-pod
 * switching on the host, VNet traffic out of the NIC to the fabric gateway,
 * traffic beyond the VNet source-translated to the primary IP (untouched
 * from a pod whose address has a public IP of its own), and the host's own
 * addresses, and replies in flows the host stack delivered, to
 * the host stack. Tagged frames, malformed packets and destinations no pod
 * may reach are dropped first. A pod's egress rate polices what it sends,
 * wherever it goes; a pod on this node with an ingress rate receives through
 * its host veth's qdisc (lib/bandwidth.h). The sender's rule set, and a pod
 * on this node's as it receives, decide too (lib/policy.h).
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/verdict.h"
#include "lib/forward.h"
#include "lib/arp.h"
#include "lib/pull.h"
#include "lib/snat.h"
#include "lib/host_flows.h"
#include "lib/bandwidth.h"
#include "lib/policy.h"

/* The endpoint behind this veth if (saddr, smac) are its own, else a drop verdict. */
static __always_inline struct vnd_endpoint *
source_endpoint(__u32 ifindex, __be32 saddr, const __u8 *smac, struct vnd_verdict *v)
{
	struct vnd_endpoint *ep = vnd_endpoints.lookup(&saddr);

	if (!ep || ep->ifindex != ifindex) {
		verdict_drop(v, VND_DROP_SPOOF_IP);
		return NULL;
	}
	if (!mac_equal(ep->pod_mac, smac)) {
		verdict_drop(v, VND_DROP_SPOOF_MAC);
		return NULL;
	}
	return ep;
}

static __always_inline void handle_arp(struct __sk_buff *skb, struct ethhdr *eth,
				       void *data_end, struct vnd_verdict *v)
{
	struct vnd_arp *arp = arp_header(eth, data_end);
	struct vnd_endpoint *ep;

	if (!arp) {
		verdict_drop(v, VND_DROP_MALFORMED);
		return;
	}
	ep = source_endpoint(skb->ifindex, arp->sip, eth->h_source, v);
	if (!ep)
		return;
	if (!mac_equal(arp->sha, eth->h_source)) {
		verdict_drop(v, VND_DROP_SPOOF_MAC);
		return;
	}
	if (arp->hdr.ar_op != bpf_htons(ARPOP_REQUEST) || arp->tip == arp->sip) {
		/* Replies to the host's own requests, and announcements. */
		verdict_set(v, VND_HOW_PASS, 0, VND_FWD_HOST);
		return;
	}
	arp_make_reply(eth, arp, ep->host_mac);
	verdict_set(v, VND_HOW_EGRESS, skb->ifindex, VND_FWD_ARP_REPLY);
}

#define VND_HOST_AGENT_IP 0xa83f8110     /* 168.63.129.16 */
#define VND_HOST_AGENT_PORT 80
#define VND_HOST_AGENT_PLUGIN_PORT 32526
#define VND_METADATA_IP 0xa9fea9fe       /* 169.254.169.254 */

/*
 * Whether a pod's packet is for the cloud host agent's services (wire
 * server, guest agent plugin: TCP 80 and 32526). The same address also
 * answers DNS and sends load balancer health probes, whose replies must
 * pass: only these two services are closed to pods.
 */
static __always_inline int to_host_agent(const struct vnd_pkt *p, struct iphdr *ip)
{
	__be16 *ports;

	if (ip->daddr != bpf_htonl(VND_HOST_AGENT_IP) || ip->protocol != IPPROTO_TCP)
		return 0;
	ports = ipv4_ports(p, ip);
	return ports && (ports[1] == bpf_htons(VND_HOST_AGENT_PORT) ||
			 ports[1] == bpf_htons(VND_HOST_AGENT_PLUGIN_PORT));
}

/* 0, or the drop reason of a destination no pod may reach on this node. */
static __always_inline int denied_dest(const struct vnd_pkt *p, struct iphdr *ip,
				       const struct vnd_node *node)
{
	if (ipv4_martian_dst(ip->daddr))
		return VND_DROP_MARTIAN;
	if (!(node->flags & VND_NODE_ALLOW_HOST_AGENT) && to_host_agent(p, ip))
		return VND_DROP_HOST_AGENT;
	if (!(node->flags & VND_NODE_ALLOW_METADATA) && ip->daddr == bpf_htonl(VND_METADATA_IP))
		return VND_DROP_METADATA;
	return 0;
}

/* Out of the NIC to the fabric gateway, as the fabric demands. */
static __always_inline void to_fabric(const struct vnd_node *node, struct ethhdr *eth,
				      struct iphdr *ip, struct vnd_verdict *v, __u8 reason)
{
	forward_ipv4(eth, ip, node->nic_mac, node->gw_mac, VND_HOW_EGRESS, node->nic_ifindex,
		     reason, v);
}

/*
 * Beyond the VNet: translated (SPEC §5 step 5), unless the pod's address has
 * a public IP of its own (the fabric maps it to that one) or SNAT is off.
 */
static __always_inline void to_outside(struct vnd_pkt *p, struct ethhdr *eth, struct iphdr *ip,
				       const struct vnd_endpoint *src, const struct vnd_node *node,
				       struct vnd_verdict *v)
{
	int reason;

	if (src->flags & VND_EP_PUBLIC_IP) {
		to_fabric(node, eth, ip, v, VND_FWD_PUBLIC_IP);
		return;
	}
	if (!(node->flags & VND_NODE_SNAT)) {
		to_fabric(node, eth, ip, v, VND_FWD_UNTRANSLATED);
		return;
	}
	reason = snat_egress(p, ip, node);
	if (reason >= VND_DROP_MIN) {
		verdict_drop(v, reason);
		return;
	}
	ip = reread_ipv4(p, &eth, v);
	if (ip)
		to_fabric(node, eth, ip, v, reason);
}

/*
 * Steps 3 to 5: to a pod on this node (through its host veth's qdisc when
 * it has an ingress rate), to the VNet, or beyond it.
 */
static __always_inline void to_destination(struct vnd_pkt *p, struct ethhdr *eth, struct iphdr *ip,
					   const struct vnd_endpoint *src, const struct vnd_node *node,
					   __u8 dest, struct vnd_verdict *v)
{
	struct vnd_endpoint *dst = vnd_endpoints.lookup(&ip->daddr);
	int err;

	if (dst && (node->flags & VND_NODE_LOCAL_SWITCHING)) {
		err = policy_enforce(p, ip, VND_POLICY_INBOUND);
		if (err) {      /* counted for the receiver: what it did not get */
			v->metric_ifindex = dst->ifindex;
			v->dir = VND_DIR_TO_POD;
			verdict_drop(v, err);
			return;
		}
		if (bandwidth_ingress_shaped(dst, ip->daddr))
			forward_ipv4(eth, ip, dst->host_mac, dst->pod_mac, VND_HOW_POD_QDISC, dst->ifindex,
				     VND_FWD_LOCAL_SHAPED, v);
		else
			forward_ipv4(eth, ip, dst->host_mac, dst->pod_mac, VND_HOW_PEER, dst->ifindex,
				     VND_FWD_LOCAL, v);
		return;
	}
	if (dst || dest == VND_DEST_VNET) {
		to_fabric(node, eth, ip, v, VND_FWD_VNET);
		return;
	}
	to_outside(p, eth, ip, src, node, v);
}

static __always_inline void handle_ipv4(struct vnd_pkt *p, struct vnd_verdict *v)
{
	struct ethhdr *eth = pkt_data(p);
	struct iphdr *ip = ipv4_header(eth, pkt_end(p));
	struct vnd_bandwidth *src_bw;
	struct vnd_endpoint *src;
	struct vnd_flow_key flow;
	struct vnd_node *node;
	__u8 dest;
	int err;

	err = ip ? ipv4_check(p, ip) : VND_DROP_MALFORMED;
	if (err) {
		verdict_drop(v, err);
		return;
	}
	src = source_endpoint(((struct __sk_buff *)p->ctx)->ifindex, ip->saddr, eth->h_source, v);
	if (!src)
		return;
	node = node_config();
	if (!node) {
		verdict_drop(v, VND_DROP_NO_NODE_CONFIG);
		return;
	}
	err = denied_dest(p, ip, node);
	if (!err)
		err = policy_enforce(p, ip, VND_POLICY_OUTBOUND);
	if (err) {
		verdict_drop(v, err);
		return;
	}
	src_bw = bandwidth_of(src, ip->saddr);
	dest = dest_class(ip->daddr);
	if (dest == VND_DEST_HOST)
		verdict_set(v, VND_HOW_PASS, 0, VND_FWD_HOST);
	else if ((src->flags & VND_EP_HOST_FLOWS) &&
		 !host_flow_key(p, ip, ip->saddr, ip->daddr, 1, &flow) && vnd_host_flows.lookup(&flow))
		verdict_set(v, VND_HOW_PASS, 0, VND_FWD_HOST_FLOW);
	else
		to_destination(p, eth, ip, src, node, dest, v);
	if (src_bw && v->how != VND_HOW_DROP) {
		err = bandwidth_police(&src_bw->egress, pkt_len(p));
		if (err)
			verdict_drop(v, err);
	}
}

int from_container(struct __sk_buff *skb)
{
	struct vnd_verdict v = { .metric_ifindex = skb->ifindex, .dir = VND_DIR_FROM_POD,
				  .hook = VND_HOOK_FROM_CONTAINER };
	struct vnd_pkt p = { .ctx = skb, .is_xdp = 0 };
	struct ethhdr *eth;

	tc_pull_headers(skb);
	eth = pkt_data(&p);
	if ((void *)(eth + 1) > pkt_end(&p))
		verdict_drop(&v, VND_DROP_MALFORMED);
	else if (eth_vlan_tagged(&p, eth))
		verdict_drop(&v, VND_DROP_VLAN);
	else if (eth->h_proto == bpf_htons(ETH_P_IP))
		handle_ipv4(&p, &v);
	else if (eth->h_proto == bpf_htons(ETH_P_ARP))
		handle_arp(skb, eth, pkt_end(&p), &v);
	else
		verdict_drop(&v, VND_DROP_UNSUPPORTED_L3);
	return tc_finish(skb, &v);
}
