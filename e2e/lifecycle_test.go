package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

func TestStatusMetricsAndReadiness(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3, env: []string{"WEFTD_METRICS_ADDR=:9285"}})
	n1 := c.Nodes[0]
	testenv.Eventually(t, 10*time.Second, "node-1 sees both peers", func() (bool, string) {
		st, err := c.Status(n1)
		return err == nil && st.Peers.Programmed == 2, ""
	})
	code, body, err := c.Get(n1, "/readyz")
	if err != nil || code != 200 {
		t.Errorf("/readyz = %d %q, %v", code, body, err)
	}
	code, body, err = c.Get(n1, "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics = %d, %v", code, err)
	}
	for _, want := range []string{
		`weft_peers{state="encapsulated"} 2`,
		`weft_backend_info{type="vxlan"} 1`,
		`weft_build_info{commit="`,
		`weft_ready 1`,
		`weft_sync_errors_total 0`,
		`weft_etcd_watch_restarts_total 0`,
		`weft_etcd_connected 1`,
		`weft_etcd_request_duration_seconds_count{method="Txn"}`,
		`weft_lease_problem 0`,
		`weft_sync_duration_seconds_count`,
		`weft_lease_ttl_seconds`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// The states of weft_peers sum to the peers.
	sum := 0.0
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "weft_peers{") {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			sum += v
		}
	}
	if sum != 2 {
		t.Errorf("weft_peers sums to %v, want 2 peers", sum)
	}
	// The metrics address answers from another machine (the fabric), with
	// /metrics and the probes but not /status.
	url := "http://" + n1.IP.String() + ":9285"
	for path, want := range map[string]int{"/metrics": 200, "/healthz": 200, "/readyz": 200, "/status": 404} {
		if code, _, err := sandbox.GetIn(c.Fabric, url+path); err != nil || code != want {
			t.Errorf("%s%s from the fabric: %d %v, want %d", url, path, code, err, want)
		}
	}
	// weftctl status inside the node shows the same.
	out, err := sandbox.Exec(context.Background(), n1.NS, testBin(t, "weftctl"), "status")
	if err != nil {
		t.Fatalf("weftctl status: %v\n%s", err, out)
	}
	defer func() {
		// SIGTERM is a clean shutdown: exit 0, and the data path stays.
		if code := c.StopWeftd(n1, syscall.SIGTERM); code != 0 {
			t.Errorf("weftd exited with %d after SIGTERM, want 0", code)
		}
		if log, _ := os.ReadFile(n1.LogFile); !strings.Contains(string(log), `msg=stopped`) {
			t.Errorf("no clean stop in the log:\n%s", log)
		}
		if out := ipOut(t, n1.NS, "ip", "route", "show", "proto", "87"); strings.Count(out, "weft.1") != 2 {
			t.Errorf("routes removed on shutdown:\n%s", out)
		}
	}()
	for _, want := range []string{"READY           yes", "BACKEND         vxlan (interface eth0, pod MTU 1450)", "PEERS           2 known, 2 programmed, 0 other backend, 0 unreachable"} {
		if !strings.Contains(out, want) {
			t.Errorf("weftctl status lacks %q:\n%s", want, out)
		}
	}
}

func TestRestartKeepsSubnetAndDataPath(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3})
	addPods(t, c, 1)
	requireMesh(t, c)
	n1 := c.Nodes[0]
	before, _ := n1.Subnet()

	// Leftovers weft owns and a route it does not.
	ipOut(t, n1.NS, "ip", "route", "add", "100.96.250.0/24", "via", "198.18.0.99", "dev", "eth0", "proto", "87")
	ipOut(t, n1.NS, "ip", "route", "add", "100.99.0.0/24", "via", "198.18.0.254", "proto", "static")
	// A device of a backend this node no longer runs (as after a switch
	// from VNI 9) and a device that is not weft's.
	ipOut(t, n1.NS, "ip", "link", "add", "weft.9", "type", "vxlan", "id", "9", "dstport", "4789", "local", n1.IP.String())
	ipOut(t, n1.NS, "ip", "link", "add", "other.9", "type", "vxlan", "id", "19", "dstport", "4790", "local", n1.IP.String())

	c.StopWeftd(n1, syscall.SIGKILL)
	// The data path works without the daemon.
	for _, p := range c.Pods()[1:] {
		if err := ping(n1.Pods[0], p.IP.String(), 3); err != nil {
			t.Errorf("while weftd is down: %v", err)
		}
	}

	if err := c.StartWeftd(context.Background(), n1); err != nil {
		t.Fatal(err)
	}
	if after, _ := n1.Subnet(); after != before {
		t.Errorf("restart changed the subnet from %s to %s", before, after)
	}
	routes := ipOut(t, n1.NS, "ip", "route", "show", "proto", "87")
	if strings.Contains(routes, "100.96.250.0") {
		t.Errorf("stale weft route survived the restart:\n%s", routes)
	}
	if n := strings.Count(strings.TrimSpace(routes), "\n") + 1; n != 2 {
		t.Errorf("%d weft routes after restart, want 2:\n%s", n, routes)
	}
	if links := ipOut(t, n1.NS, "ip", "-o", "link"); strings.Contains(links, "weft.9") || !strings.Contains(links, "other.9") {
		t.Errorf("after restart, want weft.9 removed and other.9 kept:\n%s", links)
	}
	if out := ipOut(t, n1.NS, "ip", "route", "show", "100.99.0.0/24"); !strings.Contains(out, "proto static") {
		t.Errorf("someone else's route was removed:\n%s", out)
	}
	neigh := strings.TrimSpace(ipOut(t, n1.NS, "ip", "neigh", "show", "dev", "weft.1", "nud", "permanent"))
	fdb := strings.TrimSpace(ipOut(t, n1.NS, "bridge", "fdb", "show", "dev", "weft.1"))
	if strings.Count(neigh, "\n")+1 != 2 || strings.Count(fdb, "\n")+1 != 2 {
		t.Errorf("duplicate or missing entries after restart:\nneigh:\n%s\nfdb:\n%s", neigh, fdb)
	}
	out, _ := c.Weftctl(context.Background(), "leases")
	if strings.Count(out, "node-1") != 1 {
		t.Errorf("node-1 holds more than one lease:\n%s", out)
	}
	requireMesh(t, c)
}
