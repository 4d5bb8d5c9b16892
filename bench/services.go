package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/proxy"
	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/service"
)

// servicesConf is benchConf with a service network.
const servicesConf = `{"Network":"100.96.0.0/12","SubnetLen":26,"ServiceNetwork":"100.64.0.0/16","Backend":{"Type":"vxlan"}}`

// servicesResult is what services cost.
type servicesResult struct {
	N, Endpoints int
	// Cold is from starting weftd (etcd holding N services) until its
	// status reports all N programmed; Sync is the proxy's first
	// transaction within it (weft_service_sync_duration_seconds).
	Cold, Sync time.Duration
	// Change is, per endpoint change, from writing the service to etcd
	// until the kernel announces the committed nftables transaction.
	Change       []time.Duration
	RSSMB, RSSFB float64 // weftd's resident set after Change, and its file part
	// PerConn is the cost of a new connection per number of services.
	PerConn []connCost
}

// connCost is the time of a new TCP connection to the last of n services'
// VIPs, through weft's table (a verdict map) and through a linear chain of
// one rule per service built by hand (kube-proxy's iptables design).
type connCost struct {
	Services       int
	Map, Linear    time.Duration // median
	MapP90, LinP90 time.Duration
}

// svcVIP is the VIP of service i (100.64.0.0/16 holds 65,534).
func svcVIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64, byte((i + 1) >> 8), byte(i + 1)})
}

// benchService is service i with eps endpoints, version v of them.
func benchService(i, eps, v int) *service.Service {
	s := &service.Service{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i), VIPs: []netip.Addr{svcVIP(i)},
		Ports: []service.Port{{Protocol: service.TCP, Port: 80, TargetPort: 8080}}, TrafficPolicy: service.Cluster}
	for e := range eps {
		// Endpoints anywhere in the pod network; nothing connects here.
		s.Endpoints = append(s.Endpoints, service.Endpoint{Address: netip.AddrFrom4([4]byte{100, byte(97 + e), byte(i >> 8), byte(i) ^ byte(v)})})
	}
	return s
}

func putService(ctx context.Context, cli *clientv3.Client, s *service.Service) error {
	_, err := cli.Put(ctx, "/weft/network/services/"+s.Key(), string(s.Marshal()))
	return err
}

// servicesBench measures a node programming n services with eps
// endpoints each from a cold start, then changes of one endpoint.
func servicesBench(ctx context.Context, bin string, n, eps int) (servicesResult, error) {
	res := servicesResult{N: n, Endpoints: eps}
	c, err := cluster(ctx, bin, servicesConf)
	if err != nil {
		return res, err
	}
	defer release(c)
	cli, err := c.EtcdClient()
	if err != nil {
		return res, err
	}
	defer cli.Close()
	for i := range n {
		if err := putService(ctx, cli, benchService(i, eps, 0)); err != nil {
			return res, err
		}
	}
	node, err := c.PrepareNode(0)
	if err != nil {
		return res, err
	}
	start := time.Now()
	if err := c.StartWeftdAsync(node); err != nil {
		return res, err
	}
	for {
		st, err := c.Status(node)
		if err == nil && st.Services != nil && st.Services.Programmed == n {
			res.Cold = time.Since(start)
			break
		}
		if time.Since(start) > 2*time.Minute {
			return res, fmt.Errorf("%d services not programmed after 2 minutes (%v)", n, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if res.Sync, err = firstServiceSync(c, node); err != nil {
		return res, err
	}

	events, stop, err := nftEvents(node.NS)
	if err != nil {
		return res, err
	}
	defer stop()
	for v := 1; v <= 21; v++ {
		// Let the previous change's cleanup (1 s later) pass first.
		time.Sleep(1300 * time.Millisecond)
		drain(events)
		t0 := time.Now()
		if err := putService(ctx, cli, benchService(v*37%n, eps, v)); err != nil {
			return res, err
		}
		select {
		case at := <-events:
			res.Change = append(res.Change, at.Sub(t0))
		case <-time.After(10 * time.Second):
			return res, errors.New("no nftables transaction 10 s after an endpoint change")
		}
	}
	res.RSSMB, res.RSSFB, err = rssMB(node.WeftdPID())
	return res, err
}

// firstServiceSync reads the duration of the proxy's first sync from
// weftd's /metrics (the histogram's sum while its count is 1).
func firstServiceSync(c *sandbox.Cluster, n *sandbox.Node) (time.Duration, error) {
	_, body, err := c.Get(n, "/metrics")
	if err != nil {
		return 0, err
	}
	var sum, count float64
	for _, l := range strings.Split(body, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "weft_service_sync_duration_seconds_sum":
			sum = v
		case "weft_service_sync_duration_seconds_count":
			count = v
		}
	}
	if count != 1 {
		return 0, fmt.Errorf("the proxy synced %v times before its status said programmed", count)
	}
	return time.Duration(sum * float64(time.Second)), nil
}

// nftEvents reports when nftables transactions commit in namespace ns:
// the kernel multicasts their changes to NFNLGRP_NFTABLES at commit.
func nftEvents(ns string) (<-chan time.Time, func(), error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(h), Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
	if err != nil {
		return nil, nil, err
	}
	conn.SetReadBuffer(8 << 20)
	ch := make(chan time.Time, 1<<16)
	go func() {
		for {
			msgs, err := conn.Receive()
			now := time.Now()
			if err != nil && !errors.Is(err, unix.ENOBUFS) {
				return
			}
			for range msgs {
				select {
				case ch <- now:
				default:
				}
			}
		}
	}()
	return ch, func() { conn.Close() }, nil
}

func drain(ch <-chan time.Time) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// perConnection measures connCost for each count: namespaces client
// (198.18.0.2), node (198.18.0.1, the rules) and endpoint (100.96.1.5,
// TCP 8080), joined by veths; the client connects to the last service's
// VIP. The node is programmed by weft's own table code (internal/proxy),
// then, for the comparison, by a hand-made linear chain.
func perConnection(counts []int) ([]connCost, error) {
	pfx := fmt.Sprintf("wbs%d", os.Getpid()%100000)
	client, node, ep := pfx+"-client", pfx+"-node", pfx+"-ep"
	defer func() {
		for _, n := range []string{client, node, ep} {
			exec.Command("ip", "netns", "del", n).Run()
		}
	}()
	for _, cmd := range [][]string{
		{"ip", "netns", "add", client}, {"ip", "netns", "add", node}, {"ip", "netns", "add", ep},
		{"ip", "-n", node, "link", "add", "c0", "type", "veth", "peer", "name", "eth0", "netns", client},
		{"ip", "-n", node, "link", "add", "e0", "type", "veth", "peer", "name", "eth0", "netns", ep},
		{"ip", "-n", node, "addr", "add", "198.18.0.1/24", "dev", "c0"},
		{"ip", "-n", node, "addr", "add", "100.96.1.1/24", "dev", "e0"},
		{"ip", "-n", client, "addr", "add", "198.18.0.2/24", "dev", "eth0"},
		{"ip", "-n", ep, "addr", "add", "100.96.1.5/24", "dev", "eth0"},
		{"ip", "-n", node, "link", "set", "c0", "up"}, {"ip", "-n", node, "link", "set", "e0", "up"},
		{"ip", "-n", client, "link", "set", "eth0", "up"}, {"ip", "-n", ep, "link", "set", "eth0", "up"},
		{"ip", "-n", client, "link", "set", "lo", "up"}, {"ip", "-n", ep, "link", "set", "lo", "up"},
		{"ip", "-n", client, "route", "add", "default", "via", "198.18.0.1"},
		{"ip", "-n", ep, "route", "add", "default", "via", "100.96.1.1"},
		{"ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %v: %s", strings.Join(cmd, " "), err, out)
		}
	}
	var l net.Listener
	if err := sandbox.InNetNS(ep, func() (err error) {
		l, err = net.Listen("tcp", "100.96.1.5:8080")
		return err
	}); err != nil {
		return nil, err
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	nsh, err := netns.GetFromName(node)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	table := proxy.NewTable(proxy.BufferedConn(int(nsh)))
	nodeInfo := &proxy.Node{
		Subnets:         []netip.Prefix{netip.MustParsePrefix("100.96.1.0/24")},
		PodNetworks:     []netip.Prefix{netip.MustParsePrefix("100.96.0.0/12")},
		ServiceNetworks: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16")},
	}
	var out []connCost
	for _, n := range counts {
		cc := connCost{Services: n}
		var svcs []*service.Service
		for i := range n {
			s := benchService(i, 0, 0)
			s.Endpoints = []service.Endpoint{{Address: netip.MustParseAddr("100.96.1.5")}}
			svcs = append(svcs, s)
		}
		table.Resync()
		if _, err := table.Sync(proxy.Build(svcs, nodeInfo), nodeInfo.Subnets); err != nil {
			return nil, fmt.Errorf("programming %d services: %w", n, err)
		}
		target := netip.AddrPortFrom(svcVIP(n-1), 80).String()
		if cc.Map, cc.MapP90, err = connectTimes(client, target); err != nil {
			return nil, fmt.Errorf("%d services in a verdict map: %w", n, err)
		}
		if err := table.Remove(); err != nil {
			return nil, err
		}
		if err := linearChain(node, n); err != nil {
			return nil, err
		}
		if cc.Linear, cc.LinP90, err = connectTimes(client, target); err != nil {
			return nil, fmt.Errorf("%d services in a linear chain: %w", n, err)
		}
		if out, err := exec.Command("ip", "netns", "exec", node, "nft", "delete", "table", "ip", "linear").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("nft delete table: %v: %s", err, out)
		}
		out = append(out, cc)
	}
	return out, nil
}

// linearChain programs n services in namespace ns as kube-proxy's
// iptables mode lays them out: one rule per service port, tried in turn.
func linearChain(ns string, n int) error {
	var b strings.Builder
	b.WriteString("table ip linear {\n chain prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n")
	for i := range n {
		fmt.Fprintf(&b, "  ip daddr %s tcp dport 80 dnat to 100.96.1.5:8080\n", svcVIP(i))
	}
	b.WriteString(" }\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr != 100.96.0.0/12 ip daddr 100.96.1.5 masquerade\n }\n}\n")
	f := filepath.Join(os.TempDir(), fmt.Sprintf("weft-bench-linear-%d.nft", os.Getpid()))
	defer os.Remove(f)
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-f", f).CombinedOutput(); err != nil {
		return fmt.Errorf("nft -f (%d rules): %v: %s", n, err, out)
	}
	return nil
}

// connectTimes makes new connections from namespace ns to addr and
// returns the median and 90th percentile of their handshake times.
func connectTimes(ns, addr string) (median, p90 time.Duration, err error) {
	const warmup, count = 200, 3000
	var ds []time.Duration
	err = sandbox.InNetNS(ns, func() error {
		for i := range warmup + count {
			start := time.Now()
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			took := time.Since(start)
			if err != nil {
				return err
			}
			c.Close()
			if i >= warmup {
				ds = append(ds, took)
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], ds[len(ds)*9/10], nil
}
