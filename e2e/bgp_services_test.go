package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

func host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func nodeIPs(nodes ...*sandbox.Node) []netip.Addr {
	var out []netip.Addr
	for _, n := range nodes {
		out = append(out, n.IP)
	}
	return out
}

// A Cluster service's VIP is one multipath route at the router with every
// node as next hop; clients outside reach it through more than one node.
func TestBGPClusterVIPIsMultipath(t *testing.T) {
	for _, kind := range []string{sandbox.BIRD, sandbox.FRR} {
		t.Run(kind, func(t *testing.T) {
			requireRouter(t, kind)
			c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3, router: kind})
			addPods(t, c, 1)
			servePods(t, c)
			r := c.Routers[0]
			weftctl(t, c, append([]string{"service", "add", "default/web", "--port", "80:8080"}, endpointFlags(podIPs(c))...)...)
			vip := serviceVIPs(t, c, "default/web")[0]
			routerHas(t, r, host(vip), nodeIPs(c.Nodes...)...)

			eps, through := askMany(t, r.Outside, netip.AddrPortFrom(vip, 80).String(), 90)
			t.Logf("90 connections from outside: endpoints %v, arriving from %v", eps, through)
			// Cluster masquerades: an endpoint sees an address of the node
			// the connection came in through (its vxlan device's or its
			// bridge's, both in the node's subnet).
			nodes := map[string]int{}
			for addr, count := range through {
				for _, n := range c.Nodes {
					if sn, _ := podSubnets(t, n); sn.Contains(netip.MustParseAddr(addr)) {
						nodes[n.Name] += count
					}
				}
			}
			if len(nodes) < 2 {
				t.Errorf("every connection came in through one node (%v); the router does not spread them", nodes)
			}
			st, err := c.Status(c.Nodes[0])
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, a := range st.BGP.Advertised {
				found = found || a.Prefix == host(vip).String() && strings.Contains(a.Why, "VIP of default/web: traffic policy Cluster")
			}
			if !found {
				t.Errorf("the status does not list the VIP with why: %+v", st.BGP.Advertised)
			}
		})
	}
}

// serveEcho answers connections to addr:8081 in ns with its name, then
// echoes every line.
func serveEcho(t *testing.T, ns string, addr netip.Addr, name string) {
	t.Helper()
	serve(listenIn(t, ns, netip.AddrPortFrom(addr, 8081)), func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", name)
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s\n", sc.Text())
		}
	})
}

// A Local service is announced only by the nodes with an endpoint, the
// endpoint sees the outside client, and a node whose last endpoint goes
// is withdrawn within 2 s while connections through the other node go
// on.
func TestBGPLocalVIPFollowsItsEndpoints(t *testing.T) {
	for _, kind := range []string{sandbox.BIRD, sandbox.FRR} {
		t.Run(kind, func(t *testing.T) {
			requireRouter(t, kind)
			c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3, router: kind})
			r := c.Routers[0]
			var pods []*sandbox.Pod
			for _, n := range c.Nodes[:2] {
				p, err := c.AddPod(n)
				if err != nil {
					t.Fatal(err)
				}
				pods = append(pods, p)
				serveEcho(t, p.NS, p.IP, p.Name)
			}
			servePods(t, c)
			weftctl(t, c, "service", "add", "default/local", "--port", "80:8080", "--port", "81:8081", "--traffic-policy", "Local",
				"--endpoint", pods[0].IP.String(), "--endpoint", pods[1].IP.String())
			vip := serviceVIPs(t, c, "default/local")[0]
			routerHas(t, r, host(vip), c.Nodes[0].IP, c.Nodes[1].IP)
			eps, clients := askMany(t, r.Outside, netip.AddrPortFrom(vip, 80).String(), 40)
			if len(clients) != 1 || clients[sandbox.OutsideClient.String()] != 40 {
				t.Errorf("endpoints saw %v; want the outside client's own %s", clients, sandbox.OutsideClient)
			}
			t.Logf("40 connections: %v", eps)

			// A long-lived connection through node-2 (to its own pod).
			var conn net.Conn
			var rd *bufio.Reader
			for try := 0; ; try++ {
				cn, err := sandbox.DialIn(context.Background(), r.Outside, "tcp", netip.AddrPortFrom(vip, 81).String())
				if err != nil {
					t.Fatal(err)
				}
				rd = bufio.NewReader(cn)
				cn.SetDeadline(time.Now().Add(30 * time.Second))
				name, err := rd.ReadString('\n')
				if err == nil && strings.TrimSpace(name) == pods[1].Name {
					conn = cn
					break
				}
				cn.Close()
				if try == 50 {
					t.Fatalf("no connection through %s in 50 tries", c.Nodes[1].Name)
				}
			}
			defer conn.Close()

			// node-1 loses its endpoint.
			removed := time.Now()
			weftctl(t, c, "service", "endpoints", "default/local", pods[1].IP.String())
			routerHas(t, r, host(vip), c.Nodes[1].IP)
			took := time.Since(removed)
			t.Logf("%s's next hop left the router %v after its last endpoint", c.Nodes[0].Name, took.Round(10*time.Millisecond))
			if took > 2*time.Second {
				t.Errorf("the router kept %s as next hop for %v after its last local endpoint went; want at most 2 s", c.Nodes[0].Name, took)
			}
			fmt.Fprintf(conn, "still there?\n")
			if line, err := rd.ReadString('\n'); err != nil || strings.TrimSpace(line) != "still there?" {
				t.Errorf("the connection through %s broke: %q, %v", c.Nodes[1].Name, line, err)
			}
			if eps, _ := askMany(t, r.Outside, netip.AddrPortFrom(vip, 80).String(), 20); eps[pods[1].Name] != 20 {
				t.Errorf("after the change: %v", eps)
			}
		})
	}
}

// A node restarting keeps its next hop at the router (graceful restart);
// a node gone for good loses it.
func TestBGPVIPNextHopsOverRestartAndRemoval(t *testing.T) {
	for _, kind := range []string{sandbox.BIRD, sandbox.FRR} {
		t.Run(kind, func(t *testing.T) {
			requireRouter(t, kind)
			const restart = 8 * time.Second
			c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3, router: kind, gracefulRestart: restart})
			addPods(t, c, 1)
			servePods(t, c)
			r := c.Routers[0]
			weftctl(t, c, append([]string{"service", "add", "default/web", "--port", "80:8080"}, endpointFlags(podIPs(c))...)...)
			vip := serviceVIPs(t, c, "default/web")[0]
			all := nodeIPs(c.Nodes...)
			routerHas(t, r, host(vip), all...)

			// Watch the router's route throughout the restart.
			var polls, short atomic.Int64
			var worst atomic.Value
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				for ctx.Err() == nil {
					routes, err := r.Routes(ctx)
					if err == nil {
						polls.Add(1)
						if hops := routes[host(vip)].NextHops; len(hops) != len(all) {
							short.Add(1)
							worst.Store(fmt.Sprint(hops))
						}
					}
					time.Sleep(100 * time.Millisecond)
				}
			}()
			n := c.Nodes[0]
			c.StopWeftd(n, syscall.SIGTERM)
			time.Sleep(2 * time.Second)
			if err := c.StartWeftd(context.Background(), n); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 30*time.Second, "weftd to advertise again", func() (bool, string) {
				st, err := c.Status(n)
				if err != nil || st.BGP == nil || len(st.BGP.Peers) == 0 {
					return false, fmt.Sprint(err)
				}
				p := st.BGP.Peers[0]
				return p.State == "established" && p.PrefixesSent >= 2, fmt.Sprintf("%+v", p)
			})
			cancel()
			<-done
			if short.Load() > 0 {
				t.Errorf("during %s's restart the router's route to %s lacked a next hop in %d of %d looks (e.g. %v)", n.Name, vip, short.Load(), polls.Load(), worst.Load())
			}

			gone := c.Nodes[2]
			c.RemoveNode(gone)
			testenv.Eventually(t, restart+20*time.Second, "the router to drop the node gone for good", func() (bool, string) {
				routes, err := r.Routes(context.Background())
				hops := routes[host(vip)].NextHops
				return err == nil && len(hops) == 2 && !slices.Contains(hops, gone.IP), fmt.Sprint(hops, err)
			})
		})
	}
}
