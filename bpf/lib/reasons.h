/*
 * Why a packet went where it went. Every verdict is counted in vnd_metrics
 * under one of these codes. vnetdp/datapath/reasons.py parses this file, so
 * keep the one-line form: NAME = number, then a comment describing it.
 * Codes below VND_DROP_MIN forward the packet; codes from it up drop it.
 */
#ifndef VND_REASONS_H
#define VND_REASONS_H

enum vnd_reason {
	VND_FWD_LOCAL = 1,          /* pod to a pod on the same host */
	VND_FWD_VNET = 2,           /* pod to the virtual network through the NIC */
	VND_FWD_HOST = 3,           /* pod to the host's own stack */
	VND_FWD_ARP_REPLY = 4,      /* ARP request from a pod answered on the host */
	VND_FWD_TO_POD = 5,         /* from the NIC into a pod */
	VND_PASS_NIC = 6,           /* from the NIC, not for a pod: host stack */
	VND_FWD_UNTRANSLATED = 7,   /* pod to outside the VNet, SNAT disabled */
	VND_FWD_SNAT = 8,           /* pod to outside the VNet, source translated to the primary IP */
	VND_FWD_SNAT_REPLY = 9,     /* from the NIC: reply of a translated flow, into its pod */
	VND_FWD_SNAT_ICMP_ERROR = 10, /* from the NIC: ICMP error quoting a translated packet, into its pod */
	VND_FWD_HOST_FLOW = 11,     /* pod's reply in a flow the host stack delivered (e.g. DNAT): back to the host */
	VND_FWD_SNAT_FRAGMENT = 12, /* later fragment of a translated datagram, its address rewritten as its first fragment's */
	VND_FWD_LOCAL_SHAPED = 13,  /* pod to a pod on the same host with an ingress rate: through the receiver's host veth and its qdisc */
	VND_FWD_TO_POD_SHAPED = 14, /* from the NIC into a pod with an ingress rate (reverse-translated replies too): through its host veth and its qdisc */
	VND_PASS_XDP_SHAPED = 15,   /* at XDP, for a pod with an ingress rate: on to tc ingress, which can reach the pod's qdisc */
	VND_FWD_PUBLIC_IP = 16,     /* pod whose address has a public IP of its own to outside the VNet: untranslated, the fabric maps it to that public IP */
	VND_DROP_SPOOF_IP = 64,     /* source IPv4 is not the endpoint's */
	VND_DROP_SPOOF_MAC = 65,    /* source MAC is not the endpoint's */
	VND_DROP_MALFORMED = 66,    /* truncated or invalid header */
	VND_DROP_UNSUPPORTED_L3 = 67, /* neither IPv4 nor ARP from a pod */
	VND_DROP_TTL_EXCEEDED = 68, /* TTL would reach zero when forwarded */
	VND_DROP_NO_NODE_CONFIG = 69, /* node settings not written yet */
	VND_DROP_SNAT_NO_PORT = 70, /* every SNAT port tried toward this destination was taken */
	VND_DROP_SNAT_TABLE_FULL = 71, /* the SNAT table has no room for a new flow */
	VND_DROP_SNAT_UNSUPPORTED = 72, /* leaving the VNet but untranslatable: not TCP/UDP/ICMP echo, or a later fragment of no translated datagram */
	VND_DROP_VLAN = 73,         /* VLAN-tagged (802.1Q, 802.1ad, priority tag) frame from a pod */
	VND_DROP_MARTIAN = 74,      /* to 0.0.0.0/8, 127.0.0.0/8, multicast, 240.0.0.0/4 or broadcast from a pod */
	VND_DROP_HOST_AGENT = 75,   /* to the cloud host agent (168.63.129.16 TCP 80, 32526) from a pod, not allowed on this node */
	VND_DROP_METADATA = 76,     /* to the instance metadata service 169.254.169.254 from a pod, not allowed on this node */
	VND_DROP_SNAT_QUOTA = 77,   /* the pod has as many translated flows as the node allows one pod */
	VND_DROP_RATE_LIMIT = 78,   /* above the pod's egress rate, which its own qdisc should have kept: policed */
	VND_DROP_POLICY = 79,       /* a rule of the pod's rule set denies the flow (vnetdp policy show names it) */
	VND_DROP_POLICY_TABLE_FULL = 80, /* a flow the pod's rules allow, but the policy flow table has no room to keep it */
	VND_DROP_POLICY_FRAGMENT = 81, /* a later fragment to or from a pod with rules whose first fragment did not pass */
};

#define VND_DROP_MIN 64

/* Direction of a metrics entry, seen from the pod. */
enum vnd_dir {
	VND_DIR_FROM_POD = 0,
	VND_DIR_TO_POD = 1,
	VND_DIR_NIC = 2,
};

#endif
