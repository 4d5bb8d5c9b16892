package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/sandbox"
)

// bgpResult is what BGP costs and how fast it converges.
type bgpResult struct {
	// Cold is the largest cold start again, with the node's BGP speaker
	// peering with a BIRD router (compare with the same N without).
	Cold *coldResult
	// Fifty is the time from starting 50 nodes at once, peering with one
	// BIRD, until the router's kernel has all 50 pod subnets.
	Fifty time.Duration
	// VIPs is the time from writing VIPCount Cluster services until BIRD's
	// kernel has each VIP as a multipath route via all VIPNodes nodes.
	VIPs               time.Duration
	VIPCount, VIPNodes int
}

// fiftyNodesToBIRD starts 50 nodes at once next to a BIRD router and
// measures until the router's kernel table holds every node's pod subnet,
// each via its node.
func fiftyNodesToBIRD(ctx context.Context, bin string) (time.Duration, error) {
	c, err := clusterWith(ctx, bin, benchConf, sandbox.BIRD)
	if err != nil {
		return 0, err
	}
	defer release(c)
	r := c.Routers[0]
	start := time.Now()
	nodes, err := c.AddNodes(ctx, 50)
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		routes, err := r.Routes(ctx)
		if err != nil {
			return 0, err
		}
		missing := 0
		for _, n := range nodes {
			sn, err := n.Subnet()
			if rt, ok := routes[sn]; err != nil || !ok || len(rt.NextHops) != 1 || rt.NextHops[0] != n.IP {
				missing++
			}
		}
		if missing == 0 {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d of 50 pod subnets missing from BIRD's kernel table after 3 minutes", missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vipsToBIRD starts nodes next to a BIRD router, waits for their sessions,
// then writes n Cluster services to etcd (in transactions of 100) and
// measures from the first write until the router's kernel holds every VIP
// as one multipath route via every node.
func vipsToBIRD(ctx context.Context, bin string, n, nodes int) (time.Duration, error) {
	c, err := clusterWith(ctx, bin, servicesConf, sandbox.BIRD)
	if err != nil {
		return 0, err
	}
	defer release(c)
	r := c.Routers[0]
	ns, err := c.AddNodes(ctx, nodes)
	if err != nil {
		return 0, err
	}
	for deadline := time.Now().Add(time.Minute); ; {
		up, err := r.Established()
		if err == nil && len(up) == nodes {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d of %d sessions up after a minute (%v)", len(up), nodes, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cli, err := c.EtcdClient()
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	start := time.Now()
	for from := 0; from < n; from += 100 {
		var ops []clientv3.Op
		for i := from; i < min(from+100, n); i++ {
			s := benchService(i, 3, 0)
			ops = append(ops, clientv3.OpPut("/weft/network/services/"+s.Key(), string(s.Marshal())))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return 0, err
		}
	}
	for deadline := time.Now().Add(3 * time.Minute); ; {
		routes, err := r.Routes(ctx)
		if err != nil {
			return 0, err
		}
		missing := 0
		for i := range n {
			if rt := routes[netip.PrefixFrom(svcVIP(i), 32)]; len(rt.NextHops) != len(ns) {
				missing++
			}
		}
		if missing == 0 {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d of %d VIPs not multipath via %d nodes at the router after 3 minutes", missing, n, nodes)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
