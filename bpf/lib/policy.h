/*
 * Node policy (SPEC §11): a pod's security rules, in the NSG model of
 * vnetdp/policy/nsg.py, enforced on every packet the pod sends (its
 * Outbound rules: from_container) and receives (its Inbound rules: from a
 * pod on this node in from_container, from the NIC in from_nic, after a
 * reverse translation, from the host stack in to_container), before SNAT
 * and after its reverse translation, so rules see the pod's own addresses.
 *
 * Per-packet cost does not grow with the rules: the control plane
 * (vnetdp/policy/compile.py) compiles a rule set, for the pods it applies
 * to, into two LPM tries, and a new flow costs, in each of
 * VND_POLICY_LAYERS layers, two lookups and a scan of at most
 * VND_POLICY_CANDIDATES entries, at 1 rule as at 1000:
 *
 *   1. vnd_policy_addrs: (set, direction, layer, remote address) -> an
 *      address class. The trie holds every remote prefix the layer's rules
 *      name, and 0.0.0.0/0; each prefix's class is the rules whose prefixes
 *      hold it. Prefixes nest or are disjoint, so the rules whose prefixes
 *      hold an address are exactly those holding the longest prefix that
 *      holds it.
 *   2. vnd_policy_ports: (set, class, protocol, destination port) -> the
 *      candidates, by the same argument over the prefixes that cover each
 *      rule's destination port ranges (0/0 included): the class's rules,
 *      by priority, that hold the protocol and the port, up to and
 *      including the first that takes any source port. The first candidate
 *      holding the packet's source port is the layer's match. The control
 *      plane refuses a set that needs more candidates (rules naming source
 *      ports) anywhere.
 *
 * The rule that decides is the layers' match of the highest priority (rule
 * indices follow priority). Layers keep the tables from multiplying: a
 * class holds the port prefixes of every rule whose prefixes hold it, so a
 * host's class inside a broad prefix (a tag, "*") would repeat every port
 * the broad prefix's rules name. Rules naming a broad prefix are layer 0,
 * the rest layer 1, and each layer's classes hold only the layer's rules.
 *
 * Rules whose local prefixes (Outbound: source, Inbound: destination) do
 * not hold a pod's address are left out of the set that pod gets: pods a
 * rule set selects share one compiled set per combination of such rules.
 * A lookup that finds nothing (a set being removed) denies
 * (VND_POLICY_NO_RULE).
 *
 * Stateful, as the cloud's groups: a flow a pod's rules allowed is kept in
 * vnd_policy_flows (struct vnd_flow_key as the pod sees it: ICMP echo by its
 * id), and any packet of it passes either way, so replies of allowed flows
 * pass whatever the other direction's rules say. ICMP errors quoting a
 * packet of a kept flow pass with it (conntrack's RELATED). A table without
 * room for an allowed new flow drops it (VND_DROP_POLICY_TABLE_FULL): its
 * replies could not pass. Expiry is the control plane's sweep
 * (vnetdp/datapath/policy_flows.py), as for SNAT: the datapath stamps
 * last_seen, a closing flag after a TCP FIN or RST, and a replied flag.
 * A TCP SYN on a closing flow is a new flow and meets the rules again.
 *
 * The host's own traffic into a pod (kubelet's probes) meets no rules, as
 * in the cloud, where it never crosses the fabric, but its flow is kept so
 * that the pod's replies pass. Later fragments follow their first fragment
 * (vnd_policy_frags); one whose first did not pass is
 * VND_DROP_POLICY_FRAGMENT. A denied packet is VND_DROP_POLICY, counted per
 * (pod, set, rule, direction) in vnd_policy_drops, which the control plane
 * names back.
 *
 * Pods with no rule set pay one array read (vnd_policy_node) while no pod
 * on the node has one, one hash lookup otherwise.
 */
#ifndef VND_POLICY_H
#define VND_POLICY_H

#include "common.h"
#include "ipv4.h"
#include "maps.h"
#include "pkt.h"
#include "reasons.h"

#define VND_POLICY_TOUCH_NS 1000000000ULL
#ifndef VND_POLICY_FRAG_NS
#define VND_POLICY_FRAG_NS 10000000000ULL /* how long a first fragment's later ones are followed */
#endif
#define VND_POLICY_ADDR_BITS 64         /* set, direction and layer, always matched whole */
#define VND_POLICY_PORT_BITS 80         /* set, class, protocol and pad */

/* A packet as a pod's rules and flows see it. */
struct vnd_policy_pkt {
	struct vnd_flow_key flow;       /* as the pod sees it */
	__be16 sport;                   /* the packet's TCP/UDP ports; 0 for other protocols */
	__be16 dport;
	__u8 dir;                       /* enum vnd_policy_dir */
	__u8 tcp_flags;
	__u8 icmp_error;                /* an ICMP error: it may quote a kept flow */
	__u8 pad;
};

/* The compiled set of the pod at pod; 0 when it has none. */
static __always_inline __u32 policy_set(__be32 pod)
{
	__u32 zero = 0;
	struct vnd_policy_node *node = vnd_policy_node.lookup(&zero);
	struct vnd_policy_endpoint *ep;

	if (!node || !node->endpoints)
		return 0;
	ep = vnd_policy_endpoints.lookup(&pod);
	return ep ? ep->set : 0;
}

static __always_inline int policy_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/*
 * The packet's flow as the pod that sends it (dir VND_POLICY_OUTBOUND) or
 * receives it sees it; the packet has its transport header (not a later
 * fragment). -1 when a header is cut short.
 */
static __always_inline int policy_parse(const struct vnd_pkt *p, struct iphdr *ip, __u8 dir,
					struct vnd_policy_pkt *pp)
{
	__u8 *th = (void *)ip + ip->ihl * 4;
	int inbound = dir == VND_POLICY_INBOUND;
	void *end = pkt_end(p);

	__builtin_memset(pp, 0, sizeof(*pp));
	pp->dir = dir;
	pp->flow.proto = ip->protocol;
	pp->flow.pod = inbound ? ip->daddr : ip->saddr;
	pp->flow.remote = inbound ? ip->saddr : ip->daddr;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		if ((void *)(th + 4) > end)
			return -1;
		pp->sport = *(__be16 *)th;
		pp->dport = *(__be16 *)(th + 2);
		if (ip->protocol == IPPROTO_TCP) {
			if ((void *)(th + 14) > end)
				return -1;
			pp->tcp_flags = th[13];
		}
		pp->flow.pod_port = inbound ? pp->dport : pp->sport;
		pp->flow.remote_port = inbound ? pp->sport : pp->dport;
	} else if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *icmp = (void *)th;

		if ((void *)(icmp + 1) > end)
			return -1;
		if (icmp->type == ICMP_ECHO || icmp->type == ICMP_ECHOREPLY)
			pp->flow.pod_port = icmp->un.echo.id;
		pp->icmp_error = policy_icmp_error(icmp->type);
	}
	return 0;
}

/*
 * Whether an ICMP error quotes a packet of a flow the pod keeps: one the
 * pod sent, when the error is for the pod, or one it received.
 */
static __always_inline int policy_related(const struct vnd_pkt *p, struct iphdr *ip,
					  const struct vnd_policy_pkt *pp)
{
	struct iphdr *inner = (void *)ip + ip->ihl * 4 + sizeof(struct icmphdr);
	int inbound = pp->dir == VND_POLICY_INBOUND;
	struct vnd_flow_key key = {};
	void *end = pkt_end(p);
	__be16 *ports;

	if (!pp->icmp_error || (void *)(inner + 1) > end || inner->version != 4 || inner->ihl < 5 ||
	    !ipv4_has_l4(inner))
		return 0;
	ports = (void *)inner + inner->ihl * 4;
	if ((void *)(ports + 4) > end)
		return 0;
	key.proto = inner->protocol;
	key.pod = inbound ? inner->saddr : inner->daddr;
	key.remote = inbound ? inner->daddr : inner->saddr;
	if (key.pod != pp->flow.pod)
		return 0;
	if (inner->protocol == IPPROTO_TCP || inner->protocol == IPPROTO_UDP) {
		key.pod_port = inbound ? ports[0] : ports[1];
		key.remote_port = inbound ? ports[1] : ports[0];
	} else if (inner->protocol == IPPROTO_ICMP) {
		key.pod_port = ports[2];        /* the quoted echo's id */
	} else {
		return 0;
	}
	return vnd_policy_flows.lookup(&key) != NULL;
}

/* IPPROTO_TCP, _UDP and _ICMP have rules of their own; the rest are one class. */
static __always_inline __u8 policy_proto(__u8 proto)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_ICMP)
		return proto;
	return VND_POLICY_PROTO_OTHER;
}

/* A layer's match for a new flow of set, or NULL. */
static __always_inline struct vnd_policy_candidate *
policy_match(__u32 set, __u16 layer, const struct vnd_policy_pkt *pp)
{
	struct vnd_policy_addr_key addr = { .prefixlen = VND_POLICY_ADDR_BITS + 32, .set = set,
					    .dir = pp->dir, .layer = layer, .addr = pp->flow.remote };
	struct vnd_policy_port_key port = {};
	__u16 sport = bpf_ntohs(pp->sport);
	struct vnd_policy_rules *rules;
	struct vnd_policy_class *class;
	int i;

	class = vnd_policy_addrs.lookup(&addr);
	if (!class)
		return NULL;
	port.prefixlen = VND_POLICY_PORT_BITS + 16;
	port.set = set;
	port.class = class->id;
	port.proto = policy_proto(pp->flow.proto);
	port.port = pp->dport;
	rules = vnd_policy_ports.lookup(&port);
	if (!rules)
		return NULL;
	for (i = 0; i < VND_POLICY_CANDIDATES; i++) {
		struct vnd_policy_candidate *c = &rules->rule[i];

		if (i >= rules->count)
			break;
		if (sport >= c->sport_min && sport <= c->sport_max)
			return c;
	}
	return NULL;
}

/* The rule that decides a new flow of set: 1 to allow, 0 to deny; *rule its
 * index (VND_POLICY_NO_RULE when no layer matches: denied). */
static __always_inline int policy_decide(__u32 set, const struct vnd_policy_pkt *pp, __u16 *rule)
{
	struct vnd_policy_candidate *c;
	int allow = 0;
	__u16 layer;

	*rule = VND_POLICY_NO_RULE;
	for (layer = 0; layer < VND_POLICY_LAYERS; layer++) {
		c = policy_match(set, layer, pp);
		if (c && c->rule < *rule) {
			*rule = c->rule;
			allow = c->allow;
		}
	}
	return allow;
}

static __always_inline void policy_count_drop(const struct vnd_policy_pkt *pp, __u32 set, __u16 rule,
					      __u32 len)
{
	struct vnd_policy_drop_key key = { .pod = pp->flow.pod, .set = set, .rule = rule, .dir = pp->dir };
	struct vnd_metrics_val zero = {};
	struct vnd_metrics_val *val = vnd_policy_drops.lookup_or_try_init(&key, &zero);

	if (val) {
		val->packets += 1;
		val->bytes += len;
	}
}

/* Whether a packet of a kept flow opens a new one: a TCP SYN once it closed. */
static __always_inline int policy_reopens(const struct vnd_policy_flow *f, const struct vnd_policy_pkt *pp)
{
	return (f->flags & VND_POLICY_FLOW_CLOSING) &&
	       (pp->tcp_flags & (VND_TCP_SYN | VND_TCP_ACK)) == VND_TCP_SYN;
}

/* A packet of a kept flow: its stamps. */
static __always_inline void policy_touch(struct vnd_policy_flow *f, const struct vnd_policy_pkt *pp)
{
	__u64 now = bpf_ktime_get_ns();

	if (now - f->last_seen > VND_POLICY_TOUCH_NS)
		f->last_seen = now;
	if (pp->dir != f->dir && !(f->flags & VND_POLICY_FLOW_REPLIED))
		f->flags |= VND_POLICY_FLOW_REPLIED;
	if ((pp->tcp_flags & (VND_TCP_FIN | VND_TCP_RST)) && !(f->flags & VND_POLICY_FLOW_CLOSING))
		f->flags |= VND_POLICY_FLOW_CLOSING;
}

/*
 * A packet that opens a flow: the rules decide (trusted: the host's own,
 * allowed by no rule); an allowed flow is kept. 0 or a drop reason.
 */
static __always_inline int policy_open(__u32 set, struct vnd_policy_pkt *pp, int trusted,
				       int reopen, __u32 len)
{
	struct vnd_policy_flow f = { .last_seen = bpf_ktime_get_ns(), .set = set, .dir = pp->dir };
	__u16 rule = VND_POLICY_NO_RULE;
	int err;

	if (!trusted && !policy_decide(set, pp, &rule)) {
		policy_count_drop(pp, set, rule, len);
		return VND_DROP_POLICY;
	}
	f.rule = rule;
	err = reopen ? vnd_policy_flows.update(&pp->flow, &f) : vnd_policy_flows.insert(&pp->flow, &f);
	if (err && err != -VND_EEXIST)  /* another CPU kept it meanwhile */
		return VND_DROP_POLICY_TABLE_FULL;
	return 0;
}

static __always_inline void policy_frag_key(struct vnd_policy_frag_key *key, const struct iphdr *ip)
{
	key->saddr = ip->saddr;
	key->daddr = ip->daddr;
	key->id = ip->id;
	key->proto = ip->protocol;
	key->pad = 0;
}

/* A later fragment: 0 when its first fragment passed lately, else a drop reason. */
static __always_inline int policy_frag_follow(const struct iphdr *ip)
{
	struct vnd_policy_frag_key key;
	__u64 *first;

	policy_frag_key(&key, ip);
	first = vnd_policy_frags.lookup(&key);
	if (!first || bpf_ktime_get_ns() - *first > VND_POLICY_FRAG_NS)
		return VND_DROP_POLICY_FRAGMENT;
	return 0;
}

static __always_inline void policy_frag_first(const struct iphdr *ip)
{
	struct vnd_policy_frag_key key;
	__u64 now = bpf_ktime_get_ns();

	policy_frag_key(&key, ip);
	vnd_policy_frags.update(&key, &now);
}

static __always_inline int policy_check(const struct vnd_pkt *p, struct iphdr *ip, __u8 dir, int trusted)
{
	__u32 set = policy_set(dir == VND_POLICY_INBOUND ? ip->daddr : ip->saddr);
	struct vnd_policy_flow *f;
	struct vnd_policy_pkt pp;
	int frag, err = 0;

	if (!set)
		return 0;
	frag = ipv4_fragment(ip);
	if (frag == VND_FRAG_LATER)
		return policy_frag_follow(ip);
	if (policy_parse(p, ip, dir, &pp))
		return VND_DROP_MALFORMED;
	f = vnd_policy_flows.lookup(&pp.flow);
	if (f && !policy_reopens(f, &pp)) {
		policy_touch(f, &pp);
	} else if (!policy_related(p, ip, &pp)) {
		err = policy_open(set, &pp, trusted, f != NULL, pkt_len(p));
	}
	if (!err && frag == VND_FRAG_FIRST)
		policy_frag_first(ip);
	return err;
}

/*
 * 0 when the pod that sends (dir VND_POLICY_OUTBOUND: its source) or
 * receives (VND_POLICY_INBOUND: its destination) this IPv4 packet may,
 * else the drop reason. Changes no packet data: pointers into the packet
 * stay valid.
 */
static __always_inline int policy_enforce(const struct vnd_pkt *p, struct iphdr *ip, __u8 dir)
{
	return policy_check(p, ip, dir, 0);
}

/* The host's own packet into the pod it is for: no rules, its flow kept. */
static __always_inline void policy_track(const struct vnd_pkt *p, struct iphdr *ip)
{
	policy_check(p, ip, VND_POLICY_INBOUND, 1);
}

#endif
