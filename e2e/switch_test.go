package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

// pingInterval is the interval of the continuous pings; an outage is
// measured in missed replies times this.
const pingInterval = 100 * time.Millisecond

// pinger pings from one pod to another every pingInterval until stopped.
type pinger struct {
	from, to *sandbox.Pod
	cmd      *exec.Cmd
	mu       sync.Mutex
	seqs     []int
	sent     int
	done     chan struct{}
}

var seqRe = regexp.MustCompile(`icmp_seq=(\d+)`)
var sentRe = regexp.MustCompile(`(\d+) packets transmitted`)

func startPinger(t *testing.T, from, to *sandbox.Pod) *pinger {
	t.Helper()
	p := &pinger{from: from, to: to, done: make(chan struct{})}
	p.cmd = exec.Command("ip", "netns", "exec", from.NS, "ping", "-n", "-i", fmt.Sprint(pingInterval.Seconds()), "-W", "1", to.IP.String())
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			if m := seqRe.FindStringSubmatch(line); m != nil && strings.Contains(line, "bytes from") {
				n, _ := strconv.Atoi(m[1])
				p.seqs = append(p.seqs, n)
			}
			if m := sentRe.FindStringSubmatch(line); m != nil {
				p.sent, _ = strconv.Atoi(m[1])
			}
			p.mu.Unlock()
		}
		io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

// stop ends the pings and returns how many were sent and the longest run
// of missed replies as a duration.
func (p *pinger) stop() (sent int, longest time.Duration) {
	p.cmd.Process.Signal(syscall.SIGINT)
	<-p.done
	p.cmd.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	seqs := append([]int(nil), p.seqs...)
	sort.Ints(seqs)
	prev := 0 // seqs start at 1
	worst := 0
	for _, s := range seqs {
		worst = max(worst, s-prev-1)
		prev = s
	}
	worst = max(worst, p.sent-prev)
	return p.sent, time.Duration(worst) * pingInterval
}

// pingAll starts pingers between every pair of pods on different nodes.
func pingAll(t *testing.T, c *sandbox.Cluster) []*pinger {
	var ps []*pinger
	for _, a := range c.Pods() {
		for _, b := range c.Pods() {
			if a.Node != b.Node {
				ps = append(ps, startPinger(t, a, b))
			}
		}
	}
	return ps
}

// requireNoOutage stops the pingers and fails if any pair lost
// connectivity for a second or more.
func requireNoOutage(t *testing.T, ps []*pinger) {
	t.Helper()
	for _, p := range ps {
		sent, longest := p.stop()
		t.Logf("%s -> %s: %d pings, longest outage %v", p.from.Name, p.to.Name, sent, longest)
		if sent < 20 {
			t.Errorf("%s -> %s: only %d pings sent", p.from.Name, p.to.Name, sent)
		}
		if longest >= time.Second {
			t.Errorf("%s -> %s lost connectivity for %v", p.from.Name, p.to.Name, longest)
		}
	}
}

// waitForBackend waits until every node runs backend typ and nothing of
// the other backend is left: no weft.1 device (and so no neighbour or FDB
// entries on it) after host-gw, no host-gw route after vxlan.
func waitForBackend(t *testing.T, c *sandbox.Cluster, typ string) {
	t.Helper()
	for _, n := range c.Nodes {
		testenv.Eventually(t, 30*time.Second, n.Name+" switches to "+typ+" and cleans up", func() (bool, string) {
			st, err := c.Status(n)
			if err != nil || st.Backend != typ || st.Peers.Programmed != len(c.Nodes)-1 {
				return false, fmt.Sprintf("status %+v %v", st, err)
			}
			routes := ipOut(t, n.NS, "ip", "route", "show", "proto", "87")
			links := ipOut(t, n.NS, "ip", "-o", "link")
			lines := strings.Split(strings.TrimSpace(routes), "\n")
			if len(lines) != len(c.Nodes)-1 {
				return false, routes
			}
			for _, l := range lines {
				if typ == "host-gw" && !strings.Contains(l, "dev eth0") || typ == "vxlan" && !strings.Contains(l, "dev weft.1") {
					return false, routes
				}
			}
			if typ == "host-gw" && strings.Contains(links, "weft.1") {
				return false, links
			}
			return true, ""
		})
	}
}

func netConf(backend string) string { return sandbox.NetConf(backend, false) }

func TestSwitchBackendLiveThroughEtcd(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3})
	addPods(t, c, 1)
	requireMesh(t, c)
	ps := pingAll(t, c)
	time.Sleep(time.Second)

	ctx := context.Background()
	if err := c.SetNetConf(ctx, netConf("host-gw")); err != nil {
		t.Fatal(err)
	}
	waitForBackend(t, c, "host-gw")
	time.Sleep(time.Second)
	if err := c.SetNetConf(ctx, netConf("vxlan")); err != nil {
		t.Fatal(err)
	}
	waitForBackend(t, c, "vxlan")
	time.Sleep(time.Second)
	requireNoOutage(t, ps)

	out, _ := c.Weftctl(ctx, "leases")
	if strings.Count(out, "vxlan") != 3 {
		t.Errorf("leases after switching back:\n%s", out)
	}
}

func TestSwitchBackendRollingThroughConfigMapFiles(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3, configFiles: true})
	addPods(t, c, 1)
	requireMesh(t, c)
	ps := pingAll(t, c)
	time.Sleep(time.Second)

	// One node at a time, as a slow kubelet sync would: for a while the
	// cluster runs both backends.
	for _, typ := range []string{"host-gw", "vxlan"} {
		for _, n := range c.Nodes {
			if err := c.SetNodeConfig(n, netConf(typ)); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 15*time.Second, n.Name+" announces "+typ, func() (bool, string) {
				st, err := c.Status(n)
				return err == nil && st.Backend == typ, fmt.Sprint(st)
			})
			time.Sleep(2 * time.Second) // mixed cluster
		}
		waitForBackend(t, c, typ)
	}
	requireNoOutage(t, ps)
}

func TestRefusedConfigChangesKeepTheNodeRunning(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	requireMesh(t, c)
	n1 := c.Nodes[0]
	routes := ipOut(t, n1.NS, "ip", "route", "show", "proto", "87")
	// The network cannot change under running pods.
	if err := c.SetNetConf(context.Background(), `{"Network":"100.64.0.0/12","Backend":{"Type":"host-gw"}}`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the change to be refused", func() (bool, string) {
		st, err := c.Status(n1)
		return err == nil && strings.Contains(st.ConfigIssue, "cannot be applied to running nodes"), fmt.Sprint(st)
	})
	if st, _ := c.Status(n1); st.Backend != "vxlan" || !st.Ready {
		t.Errorf("node changed after a refused config: %+v", st)
	}
	if _, body, _ := c.Get(n1, "/metrics"); !strings.Contains(body, "weft_config_rejected_total 1") {
		t.Error("refusal not counted in weft_config_rejected_total")
	}
	if after := ipOut(t, n1.NS, "ip", "route", "show", "proto", "87"); after != routes {
		t.Errorf("routes changed:\n%s\n%s", routes, after)
	}
	requireMesh(t, c)
}

// TestPingMonitorSeesAnOutage shows the outage measurement above can fail:
// with weftd stopped, a route removed for two seconds is a two-second
// outage.
func TestPingMonitorSeesAnOutage(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "host-gw", nodes: 2})
	addPods(t, c, 1)
	requireMesh(t, c)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	c.StopWeftd(n1, syscall.SIGKILL) // so nothing repairs the route
	p := startPinger(t, n1.Pods[0], n2.Pods[0])
	time.Sleep(time.Second)
	sn, _ := n2.Subnet()
	ipOut(t, n1.NS, "ip", "route", "del", sn.String())
	time.Sleep(2 * time.Second)
	ipOut(t, n1.NS, "ip", "route", "add", sn.String(), "via", n2.IP.String(), "proto", "87")
	time.Sleep(time.Second)
	_, longest := p.stop()
	if longest < 1500*time.Millisecond || longest > 3*time.Second {
		t.Errorf("measured an outage of %v for a route removed for 2s", longest)
	}
}
