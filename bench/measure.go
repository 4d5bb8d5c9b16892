package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/internal/sandbox"
)

// coldResult is one cold start.
type coldResult struct {
	N        int
	Converge time.Duration // weftd start → N routes in the kernel
	// weftd's resident set while it runs on after converging, sampled
	// every rssEvery for rssWindow: the peak, the median, and the peak's
	// file-backed part (the binary's pages the kernel maps).
	RSSMB, RSSMedianMB, RSSFileMB float64
	// CPU is the share of one core weftd used in that window.
	CPU float64
	// Go is what weftd's Go runtime reports on /metrics after the window.
	Go goMemory
}

// goMemory is the Go runtime's view of weftd's memory, in MB.
type goMemory struct {
	HeapInuse, NextGC, GCSys, StackSys float64
}

// readGoMemory scrapes the runtime's memory figures from n's /metrics.
func readGoMemory(c *sandbox.Cluster, n *sandbox.Node) (goMemory, error) {
	code, body, err := c.Get(n, "/metrics")
	if err != nil || code != 200 {
		return goMemory{}, fmt.Errorf("reading weftd's /metrics: %d %v", code, err)
	}
	var m goMemory
	want := map[string]*float64{
		"go_memstats_heap_inuse_bytes": &m.HeapInuse,
		"go_memstats_next_gc_bytes":    &m.NextGC,
		"go_memstats_gc_sys_bytes":     &m.GCSys,
		"go_memstats_stack_sys_bytes":  &m.StackSys,
	}
	for _, l := range strings.Split(body, "\n") {
		name, value, ok := strings.Cut(l, " ")
		if v, known := want[name]; ok && known {
			b, err := strconv.ParseFloat(value, 64)
			if err != nil {
				return goMemory{}, fmt.Errorf("/metrics: %s: %w", l, err)
			}
			*v = b / (1 << 20)
			delete(want, name)
		}
	}
	if len(want) > 0 {
		return goMemory{}, fmt.Errorf("/metrics lacks %v", want)
	}
	return m, nil
}

// rssWindow covers two periodic resyncs (--resync-interval, 5 s), the
// most memory weftd uses once it runs.
const (
	rssWindow = 12 * time.Second
	rssEvery  = 100 * time.Millisecond
)

// coldStart measures a node joining a cluster of n leases; with router
// (sandbox.BIRD), the cluster has an upstream router and the node runs its
// BGP speaker, peering with it.
func coldStart(ctx context.Context, bin string, n int, router string) (coldResult, error) {
	res := coldResult{N: n}
	c, cli, err := populated(ctx, bin, n, router)
	if err != nil {
		return res, err
	}
	defer release(c)
	defer cli.Close()
	node, err := c.PrepareNode(0)
	if err != nil {
		return res, err
	}
	if res.Converge, err = timeToRoutes(c, node, n); err != nil {
		return res, err
	}
	var samples []float64
	cpu0, err := cpuTime(node.WeftdPID())
	if err != nil {
		return res, err
	}
	for range rssWindow / rssEvery {
		time.Sleep(rssEvery)
		total, file, err := rssMB(node.WeftdPID())
		if err != nil {
			return res, err
		}
		samples = append(samples, total)
		if total > res.RSSMB {
			res.RSSMB, res.RSSFileMB = total, file
		}
	}
	sort.Float64s(samples)
	res.RSSMedianMB = samples[len(samples)/2]
	cpu1, err := cpuTime(node.WeftdPID())
	if err != nil {
		return res, err
	}
	res.CPU = (cpu1 - cpu0).Seconds() / rssWindow.Seconds()
	res.Go, err = readGoMemory(c, node)
	return res, err
}

// timeToRoutes starts weftd on node and returns the time until the
// kernel has a weft route for each of n peers.
func timeToRoutes(c *sandbox.Cluster, node *sandbox.Node, n int) (time.Duration, error) {
	k, err := openKernel(node.NS)
	if err != nil {
		return 0, err
	}
	defer k.close()
	// Count the kernel's route events (cheap), not dumps of the table
	// (which would compete with weftd for the CPU), then confirm by one
	// dump.
	events, stop, err := k.routeEvents()
	if err != nil {
		return 0, err
	}
	defer stop()
	start := time.Now()
	if err := c.StartWeftdAsync(node); err != nil {
		return 0, err
	}
	added := 0
	timeout := time.After(2 * time.Minute)
	for added < n {
		select {
		case u := <-events:
			if u.Type == unix.RTM_NEWROUTE && u.Protocol == kernel.RouteProtocol {
				added++
			}
		case <-timeout:
			return 0, fmt.Errorf("%d of %d routes after 2 minutes", added, n)
		}
	}
	took := time.Since(start)
	if got, err := k.weftRoutes(); err != nil || got != n {
		return 0, fmt.Errorf("the kernel holds %d weft routes, want %d (%v)", got, n, err)
	}
	return took, nil
}

// cpuTime reads the user and system time a process has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("reading /proc/%d/stat: %v %v", pid, err1, err2)
	}
	const ticks = 100 // USER_HZ
	return time.Duration(utime+stime) * time.Second / ticks, nil
}

// populated starts an empty cluster whose etcd holds n generated leases;
// the caller stops the cluster and closes the client.
func populated(ctx context.Context, bin string, n int, router string) (*sandbox.Cluster, *clientv3.Client, error) {
	c, err := clusterWith(ctx, bin, benchConf, router)
	if err != nil {
		return nil, nil, err
	}
	cli, err := c.EtcdClient()
	if err != nil {
		release(c)
		return nil, nil, err
	}
	if err := putLeases(ctx, cli, 0, n); err != nil {
		cli.Close()
		release(c)
		return nil, nil, err
	}
	return c, cli, nil
}

// rssMB reads a process's resident set and its file-backed part.
func rssMB(pid int) (total, file float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	found := 0
	for _, l := range strings.Split(string(b), "\n") {
		for key, v := range map[string]*float64{"VmRSS:": &total, "RssFile:": &file} {
			if strings.HasPrefix(l, key) {
				kb, _ := strconv.Atoi(strings.Fields(l)[1])
				*v = float64(kb) / 1024
				found++
			}
		}
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("no VmRSS/RssFile for pid %d", pid)
	}
	return total, file, nil
}

// burstResult is the incremental measurements on a node with N peers.
type burstResult struct {
	N int
	// 100 leases in one transaction → kernel, burstRounds times each way:
	// the median and the worst, and the time etcd took to commit the
	// transaction (the client's round trip; median and worst), part of
	// the former.
	Add, Delete, AddMax, DeleteMax, Commit, CommitMax time.Duration
	P50, P99, Max                                     time.Duration // one lease → kernel, 200 samples
	Samples                                           int
}

func burstAndLatency(ctx context.Context, bin string, n int) (burstResult, error) {
	res := burstResult{N: n}
	c, cli, err := populated(ctx, bin, n, "")
	if err != nil {
		return res, err
	}
	defer release(c)
	defer cli.Close()
	node, err := c.AddNode(ctx)
	if err != nil {
		return res, err
	}
	k, err := openKernel(node.NS)
	if err != nil {
		return res, err
	}
	defer k.close()
	if _, err := k.waitRoutes(n, time.Minute); err != nil {
		return res, err
	}
	// Generated peers must not collide with the subnet this node leased.
	own, err := node.Subnet()
	if err != nil {
		return res, err
	}
	base := n
	for i := n; i < n+1000; i++ {
		if key, _ := peerLease(i); key == strings.Replace(own.String(), "/", "-", 1) {
			base = n + 1000
		}
	}
	events, stop, err := k.routeEvents()
	if err != nil {
		return res, err
	}
	defer stop()
	time.Sleep(time.Second)

	count := func(typ uint16, want int) (time.Time, error) {
		seen := 0
		timeout := time.After(30 * time.Second)
		for {
			select {
			case u := <-events:
				if u.Type == typ && u.Protocol == kernel.RouteProtocol {
					if seen++; seen == want {
						return time.Now(), nil
					}
				}
			case <-timeout:
				return time.Time{}, fmt.Errorf("saw %d of %d route events", seen, want)
			}
		}
	}
	drain := func() {
		for {
			select {
			case <-events:
			case <-time.After(200 * time.Millisecond):
				return
			}
		}
	}
	var adds, dels, commits []time.Duration
	for range burstRounds {
		drain()
		start := time.Now()
		if err := putLeases(ctx, cli, base, base+100); err != nil {
			return res, err
		}
		commits = append(commits, time.Since(start))
		t, err := count(unix.RTM_NEWROUTE, 100)
		if err != nil {
			return res, fmt.Errorf("burst of 100 joins: %w", err)
		}
		adds = append(adds, t.Sub(start))
		drain()
		start = time.Now()
		if err := deleteLeases(ctx, cli, base, base+100); err != nil {
			return res, err
		}
		commits = append(commits, time.Since(start))
		if t, err = count(unix.RTM_DELROUTE, 100); err != nil {
			return res, fmt.Errorf("burst of 100 leaves: %w", err)
		}
		dels = append(dels, t.Sub(start))
	}
	res.Add, res.AddMax = medianMax(adds)
	res.Delete, res.DeleteMax = medianMax(dels)
	res.Commit, res.CommitMax = medianMax(commits)
	drain()

	var lat []time.Duration
	for i := range 200 {
		peer := base + 200 + i
		key, value := peerLease(peer)
		dst := netip.MustParsePrefix(strings.Replace(key, "-", "/", 1))
		start := time.Now()
		if _, err := cli.Put(ctx, subnetsPrefix+key, value); err != nil {
			return res, err
		}
		if err := waitFor(events, dst, unix.RTM_NEWROUTE); err != nil {
			return res, err
		}
		lat = append(lat, time.Since(start))
		if _, err := cli.Delete(ctx, subnetsPrefix+key); err != nil {
			return res, err
		}
		if err := waitFor(events, dst, unix.RTM_DELROUTE); err != nil {
			return res, err
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	res.Samples = len(lat)
	res.P50, res.P99, res.Max = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	return res, nil
}

// burstRounds is how often the 100-lease burst is measured each way.
const burstRounds = 10

// medianMax returns the median and the largest of ds; it sorts ds.
func medianMax(ds []time.Duration) (median, largest time.Duration) {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], ds[len(ds)-1]
}

func waitFor(events <-chan netlink.RouteUpdate, dst netip.Prefix, typ uint16) error {
	timeout := time.After(10 * time.Second)
	for {
		select {
		case u := <-events:
			if u.Type == typ && u.Dst != nil && u.Dst.String() == dst.String() {
				return nil
			}
		case <-timeout:
			return fmt.Errorf("no route event %d for %s", typ, dst)
		}
	}
}
