package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

// requireRouter fails (under CI) or skips a test whose router is not
// installed.
func requireRouter(t *testing.T, kind string) {
	t.Helper()
	bin := map[string]string{sandbox.BIRD: "bird", sandbox.FRR: "/usr/lib/frr/bgpd"}[kind]
	if _, err := exec.LookPath(bin); err != nil {
		testenv.Unavailable(t, "needs %s (Debian package %s; scripts/need installs it)", kind, map[string]string{sandbox.BIRD: "bird2", sandbox.FRR: "frr"}[kind])
	}
}

// routerHas waits until the router's kernel routes dst via exactly the
// next hops want (a multipath route when several).
func routerHas(t *testing.T, r *sandbox.Router, dst netip.Prefix, want ...netip.Addr) {
	t.Helper()
	slices.SortFunc(want, netip.Addr.Compare)
	testenv.Eventually(t, 45*time.Second, fmt.Sprintf("the %s router to route %s via %v", r.Kind, dst, want), func() (bool, string) {
		routes, err := r.Routes(context.Background())
		if err != nil {
			return false, err.Error()
		}
		got := slices.Clone(routes[dst].NextHops)
		slices.SortFunc(got, netip.Addr.Compare)
		return slices.Equal(got, want), fmt.Sprint(routes)
	})
}

// podSubnets returns the node's IPv4 and (dual-stack) IPv6 pod subnets.
func podSubnets(t *testing.T, n *sandbox.Node) (v4, v6 netip.Prefix) {
	t.Helper()
	v4, v6, err := n.Subnets()
	if err != nil {
		t.Fatal(err)
	}
	return v4, v6
}

// listenIn listens on TCP addr inside namespace ns until the test ends.
func listenIn(t *testing.T, ns string, addr netip.AddrPort) net.Listener {
	t.Helper()
	var l net.Listener
	if err := testenv.InNamedNetNS(ns, func() (err error) {
		l, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// serve handles every connection l accepts, each on a goroutine of its
// own, until l is closed.
func serve(l net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// Both routers learn every node's pod subnets, IPv4 and IPv6, with the
// node as next hop, and the outside network reaches the pods directly:
// the pod sees the client's own address, also with --ip-masq.
func TestBGPAdvertisesPodSubnets(t *testing.T) {
	for _, kind := range []string{sandbox.BIRD, sandbox.FRR} {
		t.Run(kind, func(t *testing.T) {
			requireRouter(t, kind)
			c := startCluster(t, clusterOpts{
				backend: "vxlan", nodes: 3, ipv6: true, ipMasq: true, router: kind,
				netConf: sandbox.NetConf("vxlan", true),
			})
			addPods(t, c, 1)
			r := c.Routers[0]
			for _, n := range c.Nodes {
				v4, v6 := podSubnets(t, n)
				routerHas(t, r, v4, n.IP)
				routerHas(t, r, v6, n.IPv6)
			}
			for _, p := range c.Pods() {
				if out, err := sandbox.Exec(context.Background(), r.Outside, "ping", "-c", "2", "-W", "2", p.IP.String()); err != nil {
					t.Errorf("the outside client cannot ping %s on %s: %v\n%s", p.IP, p.Node.Name, err, out)
				}
				if out, err := sandbox.Exec(context.Background(), r.NS, "ping", "-c", "2", "-W", "2", p.IPv6.String()); err != nil {
					t.Errorf("the router cannot reach %s on %s over IPv6: %v\n%s", p.IPv6, p.Node.Name, err, out)
				}
				l := listenIn(t, p.NS, netip.AddrPortFrom(p.IP, 7000))
				if from := sendFrom(t, "the outside client", r.Outside, l, 256<<10); from != sandbox.OutsideClient.String() {
					t.Errorf("a connection from outside reached %s from %s, want the client's own %s (no NAT)", p.Name, from, sandbox.OutsideClient)
				}
			}
			// What the node says about it.
			st, err := c.Status(c.Nodes[0])
			if err != nil {
				t.Fatal(err)
			}
			if st.BGP == nil || len(st.BGP.Peers) != 1 || st.BGP.Peers[0].State != "established" || st.BGP.Peers[0].PrefixesSent != 2 {
				t.Errorf("status BGP = %+v; want one established peer with 2 prefixes sent", st.BGP)
			}
			_, metrics, err := c.Get(c.Nodes[0], "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				fmt.Sprintf(`weft_bgp_session_up{peer="%s"} 1`, r.IP),
				fmt.Sprintf(`weft_bgp_prefixes_advertised{peer="%s"} 2`, r.IP),
				"weft_bgp_routes 2",
			} {
				if !strings.Contains(metrics, want) {
					t.Errorf("/metrics lacks %q", want)
				}
			}
			// Nothing learned over BGP reaches the node's kernel.
			if out := ipOut(t, c.Nodes[0].NS, "ip", "route", "show", "proto", "bgp"); strings.TrimSpace(out) != "" {
				t.Errorf("the node installed BGP routes:\n%s", out)
			}
		})
	}
}

// Restarting weftd (SIGTERM or SIGKILL) withdraws nothing from the
// routers, and pod traffic from outside loses nothing meanwhile.
func TestBGPRestartKeepsRoutes(t *testing.T) {
	for _, kind := range []string{sandbox.BIRD, sandbox.FRR} {
		t.Run(kind, func(t *testing.T) {
			requireRouter(t, kind)
			c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2, router: kind})
			addPods(t, c, 1)
			r := c.Routers[0]
			n := c.Nodes[0]
			v4, _ := podSubnets(t, n)
			routerHas(t, r, v4, n.IP)

			// Watch the router's kernel for the route going away, and ping
			// the node's pod from outside throughout.
			mon := exec.Command("ip", "-n", r.NS, "monitor", "route")
			var events strings.Builder
			mon.Stdout = &events
			if err := mon.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { mon.Process.Kill(); mon.Wait() }()
			pinger := exec.Command("ip", "netns", "exec", r.Outside, "ping", "-i", "0.05", "-W", "1", "-w", "25", n.Pods[0].IP.String())
			var pings strings.Builder
			pinger.Stdout = &pings
			if err := pinger.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
				c.StopWeftd(n, sig)
				time.Sleep(2 * time.Second)
				if err := c.StartWeftd(context.Background(), n); err != nil {
					t.Fatal(err)
				}
				testenv.Eventually(t, 30*time.Second, "the session to come back", func() (bool, string) {
					up, err := r.Established()
					return slices.Contains(up, n.IP), fmt.Sprint(up, err)
				})
				// Restart again only once the node has sent its routes
				// anew: a router keeps stale routes across one restart,
				// but BIRD flushes those not re-sent when a second restart
				// begins before the first one is done.
				testenv.Eventually(t, 30*time.Second, "weftd to advertise its subnet again", func() (bool, string) {
					st, err := c.Status(n)
					if err != nil || st.BGP == nil || len(st.BGP.Peers) == 0 {
						return false, fmt.Sprint(err)
					}
					p := st.BGP.Peers[0]
					return p.State == "established" && p.PrefixesSent > 0, fmt.Sprintf("%+v", p)
				})
			}
			pinger.Wait()
			if !strings.Contains(pings.String(), " 0% packet loss") {
				t.Errorf("pings from outside to %s lost packets while weftd restarted:\n%s", n.Pods[0].IP, testenv.Tail([]byte(pings.String()), 400))
			}
			for _, l := range strings.Split(events.String(), "\n") {
				if strings.HasPrefix(l, "Deleted") && strings.Contains(l, v4.String()) {
					t.Errorf("the router withdrew %s while weftd restarted: %s", v4, l)
				}
			}
			routerHas(t, r, v4, n.IP)
		})
	}
}

// A node gone for good is withdrawn once its graceful-restart time has
// passed.
func TestBGPNodeGoneIsWithdrawn(t *testing.T) {
	for _, kind := range []string{sandbox.BIRD, sandbox.FRR} {
		t.Run(kind, func(t *testing.T) {
			requireRouter(t, kind)
			const restart = 8 * time.Second
			c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2, router: kind, gracefulRestart: restart})
			r := c.Routers[0]
			gone := c.Nodes[1]
			v4, _ := podSubnets(t, gone)
			routerHas(t, r, v4, gone.IP)
			removed := time.Now()
			c.RemoveNode(gone)
			testenv.Eventually(t, restart+20*time.Second, "the router to withdraw the node's subnet", func() (bool, string) {
				routes, err := r.Routes(context.Background())
				_, ok := routes[v4]
				return err == nil && !ok, fmt.Sprint(routes, err)
			})
			took := time.Since(removed)
			t.Logf("%s withdrew %s %v after the node went (graceful-restart time %v)", kind, v4, took.Round(100*time.Millisecond), restart)
			if took < restart/2 {
				t.Errorf("withdrawn after %v, before the graceful-restart time %v: the node's routes were not kept", took, restart)
			}
		})
	}
}

// A wrong password keeps the session down, with a log line and a status
// that say why; the right one brings it up.
func TestBGPPassword(t *testing.T) {
	for _, kind := range []string{sandbox.BIRD, sandbox.FRR} {
		t.Run(kind, func(t *testing.T) {
			requireRouter(t, kind)
			c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 1, router: kind, routerPassword: "s3cret-pw"})
			r := c.Routers[0]
			n := c.Nodes[0]
			testenv.Eventually(t, 30*time.Second, "the session with the right password", func() (bool, string) {
				up, err := r.Established()
				return slices.Contains(up, n.IP), fmt.Sprint(up, err)
			})
			c.StopWeftd(n, syscall.SIGKILL)
			n.Env = []string{"WEFTD_BGP_PASSWORD=wrong-pw"}
			if err := c.StartWeftd(context.Background(), n); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 40*time.Second, "weftd to say why the session is down", func() (bool, string) {
				b, _ := os.ReadFile(n.LogFile)
				log := string(b)
				i := strings.LastIndex(log, "BGP session not established")
				return i >= 0 && strings.Contains(log[i:], "password"), testenv.Tail(b, 1500)
			})
			if up, _ := r.Established(); slices.Contains(up, n.IP) {
				t.Error("the session is up with a wrong password")
			}
			st, err := c.Status(n)
			if err != nil {
				t.Fatal(err)
			}
			if len(st.BGP.Peers) != 1 || st.BGP.Peers[0].State == "established" || !strings.Contains(st.BGP.Peers[0].Problem, "password") {
				t.Errorf("status: %+v; want the session down with the password named", st.BGP.Peers)
			}
			b, _ := os.ReadFile(n.LogFile)
			if strings.Contains(string(b), "wrong-pw") || strings.Contains(string(b), "s3cret-pw") {
				t.Error("the password is in weftd's log")
			}
			_, body, _ := c.Get(n, "/status")
			_, metrics, _ := c.Get(n, "/metrics")
			if strings.Contains(body+metrics, "wrong-pw") {
				t.Error("the password is in /status or /metrics")
			}

			c.StopWeftd(n, syscall.SIGKILL)
			n.Env = nil
			if err := c.StartWeftd(context.Background(), n); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 30*time.Second, "the session with the right password again", func() (bool, string) {
				up, err := r.Established()
				return slices.Contains(up, n.IP), fmt.Sprint(up, err)
			})
		})
	}
}

// A prefix one router announces to the nodes never reaches the other
// router through them, nor any node's kernel.
func TestBGPNoTransit(t *testing.T) {
	requireRouter(t, sandbox.BIRD)
	requireRouter(t, sandbox.FRR)
	second := sandbox.RouterIP(252)
	conf := fmt.Sprintf(`{"Network":"100.96.0.0/12","Backend":{"Type":"vxlan"},"BGP":{"Peers":[{"Address":"%s","ASN":%d},{"Address":"%s","ASN":%d}]}}`,
		sandbox.RouterIP(sandbox.RouterHost), sandbox.RouterASN, second, sandbox.RouterASN)
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2, router: sandbox.BIRD, netConf: conf})
	bird := c.Routers[0]
	frr, err := c.AddRouter(context.Background(), sandbox.RouterOptions{Kind: sandbox.FRR, Host: 252})
	if err != nil {
		t.Fatal(err)
	}
	if err := bird.SetAnnounceOutside(true); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		testenv.Eventually(t, 45*time.Second, n.Name+" to learn the outside network from BIRD and peer with FRR", func() (bool, string) {
			st, err := c.Status(n)
			if err != nil || st.BGP == nil {
				return false, fmt.Sprint(err)
			}
			ok := 0
			for _, p := range st.BGP.Peers {
				if p.State == "established" && (p.Address == bird.IP.String() && p.PrefixesReceived >= 1 || p.Address == frr.IP.String()) {
					ok++
				}
			}
			return ok == 2, fmt.Sprintf("%+v", st.BGP.Peers)
		})
		v4, _ := podSubnets(t, n)
		routerHas(t, frr, v4, n.IP)
	}
	time.Sleep(3 * time.Second) // time enough for a leak to arrive
	routes, err := frr.Routes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, leaked := routes[sandbox.OutsideNetwork]; leaked {
		t.Errorf("the outside network BIRD announced reached FRR through the nodes: %v", routes)
	}
	if out, _ := frr.Vtysh("show bgp ipv4 unicast " + sandbox.OutsideNetwork.String()); !strings.Contains(out, "not in table") {
		t.Errorf("FRR's BGP table has %s:\n%s", sandbox.OutsideNetwork, out)
	}
	for _, n := range c.Nodes {
		if out := ipOut(t, n.NS, "ip", "route", "show", sandbox.OutsideNetwork.String()); strings.TrimSpace(out) != "" {
			t.Errorf("%s installed a learned route: %s", n.Name, out)
		}
	}
}

// Fifty nodes peering with one BIRD: every pod subnet is installed in the
// router's kernel (the time it takes is measured by make bench).
func TestFiftyNodesPeerWithOneBIRD(t *testing.T) {
	requireRouter(t, sandbox.BIRD)
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 0, router: sandbox.BIRD})
	if _, err := c.AddNodes(context.Background(), 50); err != nil {
		t.Fatal(err)
	}
	r := c.Routers[0]
	want := map[netip.Prefix]netip.Addr{}
	for _, n := range c.Nodes {
		v4, _ := podSubnets(t, n)
		want[v4] = n.IP
	}
	testenv.Eventually(t, 90*time.Second, "all 50 pod subnets in the router's kernel", func() (bool, string) {
		routes, err := r.Routes(context.Background())
		if err != nil {
			return false, err.Error()
		}
		missing := 0
		for dst, nh := range want {
			if rt, ok := routes[dst]; !ok || !slices.Equal(rt.NextHops, []netip.Addr{nh}) {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of 50 missing", missing)
	})
}
