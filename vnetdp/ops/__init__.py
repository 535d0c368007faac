"""Day-two operations on a node (SPEC §10). They read the node's pins and
stores, never the agent.

``inspect`` gathers facts (settings, build, attachments, agent, pools, SNAT
fill, pods with records and counters) into plain JSON-able dicts for
``vnetdp status`` and ``endpoints``; ``render`` turns them into human
tables; ``stats`` samples counters and rates (``vnetdp stats``);
``metrics`` serves them to Prometheus with the CNI calls' latencies and
errors from the call spool (``vnetdp.cni.logs``); ``reconcile`` and
``upgrade`` are their commands' own."""
