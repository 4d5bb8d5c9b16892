// Package e2e holds weft's end-to-end tests: real weftd processes in a
// sandbox of network namespaces with a real etcd. They need root; under
// CI=true they fail rather than skip without it.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

type clusterOpts struct {
	backend     string
	nodes       int
	ipMasq      bool
	leaseTTL    time.Duration
	configFiles bool
	ipv6        bool // IPv6 underlay addresses too
	etcdMembers int
	netConf     string // net-conf.json instead of the default for backend
	// router adds an upstream router (sandbox.BIRD or sandbox.FRR) that
	// every node peers with; routerPassword its TCP MD5 password;
	// gracefulRestart the nodes' BGP restart time.
	router          string
	routerPassword  string
	gracefulRestart time.Duration
	// kube runs the nodes in Kubernetes mode against a real API server.
	kube bool
	// env goes into every weftd's environment.
	env []string
}

// testBin returns the path of one of weft's binaries.
func testBin(t *testing.T, name string) string { return testenv.Binary(t, name) }

// startCluster brings up a sandbox that is torn down when the test ends;
// on failure the daemons' logs are printed.
func startCluster(t *testing.T, o clusterOpts) *sandbox.Cluster {
	t.Helper()
	testenv.RequireRoot(t)
	for _, b := range []string{"weftctl", "weft-etcd", "weft"} {
		testenv.Binary(t, b)
	}
	binDir := filepath.Dir(testenv.Binary(t, "weftd"))
	id := make([]byte, 3)
	rand.Read(id)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := sandbox.Up(ctx, sandbox.Options{
		Name: "wt" + hex.EncodeToString(id), Dir: dir, BinDir: binDir,
		Nodes: o.nodes, Backend: o.backend, IPMasq: o.ipMasq, LeaseTTL: o.leaseTTL, ConfigFiles: o.configFiles,
		IPv6: o.ipv6, NetConf: o.netConf, EtcdMembers: o.etcdMembers,
		Router: o.router, RouterPassword: o.routerPassword, GracefulRestartTime: o.gracefulRestart,
		Kube: o.kube, Env: o.env,
		Log: t.Logf,
	})
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(dir, "node-*", "weftd.log"))
			routerLogs, _ := filepath.Glob(filepath.Join(dir, "router*", "*.log"))
			kubeLogs, _ := filepath.Glob(filepath.Join(dir, "kube", "*.log"))
			logs = append(append(logs, routerLogs...), kubeLogs...)
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("--- %s\n%s", l, testenv.Tail(b, 3000))
			}
		}
		c.Down()
	})
	return c
}

func addPods(t *testing.T, c *sandbox.Cluster, perNode int) {
	t.Helper()
	for _, n := range c.Nodes {
		for range perNode {
			if _, err := c.AddPod(n); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// addNodeWithPod adds a node and one pod on it; failing says what.
func addNodeWithPod(t *testing.T, c *sandbox.Cluster, what string) *sandbox.Pod {
	t.Helper()
	n, err := c.AddNode(context.Background())
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	p, err := c.AddPod(n)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ping reports whether from reaches to within a few attempts.
func ping(from *sandbox.Pod, to string, attempts int) error {
	var out string
	var err error
	for range attempts {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err = sandbox.Exec(ctx, from.NS, "ping", "-c", "1", "-W", "1", to)
		cancel()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("%s (%s) cannot ping %s: %v\n%s", from.Name, from.IP, to, err, out)
}

// requireMesh checks that every pod pings every pod on other nodes.
func requireMesh(t *testing.T, c *sandbox.Cluster) {
	t.Helper()
	for _, a := range c.Pods() {
		for _, b := range c.Pods() {
			if a.Node == b.Node {
				continue
			}
			if err := ping(a, b.IP.String(), 10); err != nil {
				t.Error(err)
			}
		}
	}
}

// transfer sends size random bytes over TCP from pod a to pod b and checks
// they arrive intact; it returns the address b saw the connection from.
func transfer(t *testing.T, a, b *sandbox.Pod, size int) string {
	t.Helper()
	var l net.Listener
	if err := testenv.InNamedNetNS(b.NS, func() (err error) {
		l, err = net.Listen("tcp", net.JoinHostPort(b.IP.String(), "7000"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return sendTo(t, a, l, size)
}

// sendTo connects from pod a to listener l and sends size random bytes.
func sendTo(t *testing.T, a *sandbox.Pod, l net.Listener, size int) string {
	t.Helper()
	return sendFrom(t, a.Name, a.NS, l, size)
}

// sendFrom connects from namespace ns (called name in messages) to
// listener l, sends size random bytes, checks they arrive intact, and
// returns the address the connection arrived from.
func sendFrom(t *testing.T, name, ns string, l net.Listener, size int) string {
	t.Helper()
	type got struct {
		sum    [32]byte
		remote string
		err    error
	}
	res := make(chan got, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			res <- got{err: err}
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		h := sha256.New()
		_, err = io.Copy(h, conn)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		res <- got{sum: sum, remote: conn.RemoteAddr().(*net.TCPAddr).IP.String(), err: err}
	}()
	data := make([]byte, size)
	rand.Read(data)
	var conn net.Conn
	if err := testenv.InNamedNetNS(ns, func() (err error) {
		conn, err = net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("%s cannot connect to %s: %v", name, l.Addr(), err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(conn, bytes.NewReader(data)); err != nil {
		t.Fatalf("sending from %s: %v", name, err)
	}
	conn.Close()
	r := <-res
	if r.err != nil {
		t.Fatalf("receiving from %s: %v", name, r.err)
	}
	if r.sum != sha256.Sum256(data) {
		t.Fatalf("data from %s arrived corrupted", name)
	}
	return r.remote
}

// ipOut runs ip (or another command) in a namespace.
func ipOut(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := sandbox.Exec(context.Background(), ns, args...)
	if err != nil {
		t.Fatalf("%v in %s: %v\n%s", args, ns, err, out)
	}
	return out
}

func TestPodsReachEachOther(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			c := startCluster(t, clusterOpts{backend: backend, nodes: 3})
			addPods(t, c, 2)
			requireMesh(t, c)
			// TCP across nodes, big enough for full-size segments: the
			// MTU must be right for it to arrive.
			pods := c.Pods()
			if from := transfer(t, pods[0], pods[len(pods)-1], 4<<20); from != pods[0].IP.String() {
				t.Errorf("pod-to-pod connection arrived from %s, want the pod's own %s", from, pods[0].IP)
			}
			// The kernel holds exactly one weft route per peer.
			for _, n := range c.Nodes {
				routes := strings.Count(strings.TrimSpace(ipOut(t, n.NS, "ip", "route", "show", "proto", "87")), "\n") + 1
				if routes != 2 {
					t.Errorf("%s has %d weft routes, want 2:\n%s", n.Name, routes, ipOut(t, n.NS, "ip", "route"))
				}
			}
		})
	}
}

func TestNodeLeavesAndJoins(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3, leaseTTL: 6 * time.Second})
	addPods(t, c, 1)
	requireMesh(t, c)

	// node-3 dies: its lease expires and every other node forgets it.
	gone := c.Nodes[2]
	goneSubnet, _ := gone.Subnet()
	c.RemoveNode(gone)
	for _, n := range c.Nodes {
		testenv.Eventually(t, 30*time.Second, n.Name+" removes the dead node's route", func() (bool, string) {
			out := ipOut(t, n.NS, "ip", "route", "show", "proto", "87")
			neigh := ipOut(t, n.NS, "ip", "neigh", "show", "dev", "weft.1")
			return !strings.Contains(out, goneSubnet.String()) && !strings.Contains(neigh, goneSubnet.Addr().String()), out + neigh
		})
	}

	// node-4 joins and is reachable from everyone.
	addNodeWithPod(t, c, "node-4 joins")
	requireMesh(t, c)
}

func TestDriftIsRepaired(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			c := startCluster(t, clusterOpts{backend: backend, nodes: 2})
			addPods(t, c, 1)
			requireMesh(t, c)
			n1, n2 := c.Nodes[0], c.Nodes[1]
			peerSubnet, _ := n2.Subnet()
			routeOf := func() (bool, string) {
				out := ipOut(t, n1.NS, "ip", "route", "show", "proto", "87")
				return strings.Contains(out, peerSubnet.String()), out
			}
			ipOut(t, n1.NS, "ip", "route", "del", peerSubnet.String())
			testenv.Eventually(t, 10*time.Second, "the deleted route comes back", routeOf)
			if backend == "vxlan" {
				gw := peerSubnet.Addr().String()
				ipOut(t, n1.NS, "ip", "neigh", "del", gw, "dev", "weft.1")
				testenv.Eventually(t, 10*time.Second, "the deleted neighbour comes back", func() (bool, string) {
					out := ipOut(t, n1.NS, "ip", "neigh", "show", "dev", "weft.1")
					return strings.Contains(out, gw+" lladdr"), out
				})
				fdb := ipOut(t, n1.NS, "bridge", "fdb", "show", "dev", "weft.1")
				mac := strings.Fields(strings.TrimSpace(fdb))[0]
				ipOut(t, n1.NS, "bridge", "fdb", "del", mac, "dev", "weft.1", "dst", n2.IP.String(), "self")
				testenv.Eventually(t, 10*time.Second, "the deleted FDB entry comes back", func() (bool, string) {
					out := ipOut(t, n1.NS, "bridge", "fdb", "show", "dev", "weft.1")
					return strings.Contains(out, mac+" dst "+n2.IP.String()), out
				})
				// The whole device: re-created with the same MAC.
				ipOut(t, n1.NS, "ip", "link", "del", "weft.1")
				testenv.Eventually(t, 10*time.Second, "the deleted device and its route come back", routeOf)
			}
			requireMesh(t, c)
		})
	}
}

func TestMasqueradeOnlyLeavingThePodNetwork(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2, ipMasq: true})
	addPods(t, c, 1)
	requireMesh(t, c)
	pod1, pod2 := c.Nodes[0].Pods[0], c.Nodes[1].Pods[0]

	// Pod to pod: the source is the pod.
	if from := transfer(t, pod1, pod2, 64<<10); from != pod1.IP.String() {
		t.Errorf("pod-to-pod traffic arrived from %s, want %s (not masqueraded)", from, pod1.IP)
	}
	// Pod to outside (the fabric, which has no route to pods): masqueraded
	// to the node's address.
	var l net.Listener
	if err := testenv.InNamedNetNS(c.Fabric, func() (err error) {
		l, err = net.Listen("tcp", net.JoinHostPort(sandbox.FabricIP.String(), "7001"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if from := sendTo(t, pod1, l, 64<<10); from != c.Nodes[0].IP.String() {
		t.Errorf("pod-to-outside traffic arrived from %s, want the node's %s", from, c.Nodes[0].IP)
	}
}
