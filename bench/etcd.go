package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
)

// etcdResult is what weft asks of etcd.
type etcdResult struct {
	Nodes          int
	Idle           time.Duration
	PerNodePerHour float64 // requests (gRPC messages received) in steady state
	JoinRequests   float64 // for one node joining
	ByMethod       map[string]float64
}

// etcdRequests sums etcd's grpc_server_msg_received_total: one per unary
// call and one per message on a stream (keep-alives, watch requests).
func etcdRequests(c *sandbox.Cluster) (float64, map[string]float64, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return sandbox.DialIn(ctx, c.Fabric, network, addr)
	}}}
	resp, err := client.Get(c.EtcdEndpoint() + "/metrics")
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	total := 0.0
	by := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "grpc_server_msg_received_total{") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		method := l[strings.Index(l, `grpc_method="`)+13:]
		method = method[:strings.IndexByte(method, '"')]
		by[method] += v
		total += v
	}
	return total, by, sc.Err()
}

func etcdLoad(ctx context.Context, bin string) (etcdResult, error) {
	res := etcdResult{Nodes: 3, Idle: 2 * time.Minute}
	c, err := cluster(ctx, bin, `{"Network":"100.96.0.0/12","Backend":{"Type":"vxlan"}}`)
	if err != nil {
		return res, err
	}
	defer release(c)
	for range res.Nodes {
		if _, err := c.AddNode(ctx); err != nil {
			return res, err
		}
	}
	time.Sleep(5 * time.Second)
	before, b1, err := etcdRequests(c)
	if err != nil {
		return res, fmt.Errorf("reading etcd's metrics: %w", err)
	}
	time.Sleep(res.Idle)
	after, b2, err := etcdRequests(c)
	if err != nil {
		return res, err
	}
	res.PerNodePerHour = (after - before) / float64(res.Nodes) / res.Idle.Hours()
	res.ByMethod = map[string]float64{}
	for m, v := range b2 {
		if d := v - b1[m]; d > 0 {
			res.ByMethod[m] = d
		}
	}
	before = after
	if _, err := c.AddNode(ctx); err != nil {
		return res, err
	}
	time.Sleep(2 * time.Second)
	after, _, err = etcdRequests(c)
	if err != nil {
		return res, err
	}
	// The join, less what the others do in those seconds (nothing, idle).
	res.JoinRequests = after - before
	return res, nil
}
