/*
 * Flows the host stack delivers to a pod (through a DNAT of the host:
 * portmap hostPorts, kube-proxy services) must have their replies go back
 * through the host stack, where conntrack reverses the translation. The
 * datapath never passes the host's netfilter, so to_container remembers such
 * flows and from_container hands their replies to the host.
 */
#ifndef VND_HOST_FLOWS_H
#define VND_HOST_FLOWS_H

#include "common.h"
#include "ipv4.h"
#include "maps.h"
#include "pkt.h"

/* The key of a TCP or UDP flow between pod and remote, or -1 for other traffic. */
static __always_inline int host_flow_key(const struct vnd_pkt *p, struct iphdr *ip, __be32 pod,
					 __be32 remote, int pod_is_source, struct vnd_flow_key *key)
{
	__be16 *ports = ipv4_ports(p, ip);

	if (!ports)
		return -1;
	__builtin_memset(key, 0, sizeof(*key));
	key->pod = pod;
	key->remote = remote;
	key->pod_port = pod_is_source ? ports[0] : ports[1];
	key->remote_port = pod_is_source ? ports[1] : ports[0];
	key->proto = ip->protocol;
	return 0;
}

#endif
