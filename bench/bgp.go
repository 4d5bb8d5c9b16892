package main

import (
	"context"
	"fmt"
	"time"

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
