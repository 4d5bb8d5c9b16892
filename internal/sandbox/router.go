package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// A router is an upstream router on the fabric, as a rack's top-of-rack
// router: it peers over BGP with every node (they dial it), installs what
// they advertise in its kernel with equal-cost multipath, and with an
// outside network behind it, where a client stands:
//
//	fabric br0 ── <name>-router: 198.18.0.253/24 (fd18::fd), ASN 64500, BIRD 2 or FRR
//	                └── <name>-outside: 203.0.113.10/24, default via 203.0.113.1
//
// With a router, the nodes' default route points to it, so replies to the
// outside network find their way back without NAT.

// Router kinds.
const (
	BIRD = "bird"
	FRR  = "frr"
)

// RouterASN is the routers' AS number; NodeASN the nodes'.
const (
	RouterASN = 64500
	NodeASN   = 64512
)

// OutsideClient is the client's address on the outside network;
// OutsideGateway the router's.
var (
	OutsideClient  = netip.MustParseAddr("203.0.113.10")
	OutsideGateway = netip.MustParseAddr("203.0.113.1")
	OutsideNetwork = netip.MustParsePrefix("203.0.113.0/24")
)

// RouterOptions describe one router.
type RouterOptions struct {
	// Kind is BIRD or FRR.
	Kind string
	// Host is the router's host number on the fabric: 198.18.0.<Host>
	// (default 253).
	Host int
	// Password is the TCP MD5 password the router expects of every node.
	Password string
	// Outside gives the router an outside network with a client.
	Outside bool
	// AnnounceOutside advertises the outside network to the nodes (they
	// must not pass it on).
	AnnounceOutside bool
}

// Router is a running upstream router.
type Router struct {
	Kind string
	Name string // router, router2, ...
	NS   string
	IP   netip.Addr
	IPv6 netip.Addr // with Options.IPv6
	// Outside is the client's namespace, "" without one.
	Outside string
	dir     string
	opts    RouterOptions
	procs   []*process
	c       *Cluster
}

// RouterHost is the default router's host number on the fabric.
const RouterHost = 253

// RouterIP is the address of the router with host number host.
func RouterIP(host int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(host)}) }

func routerIPv6(host int) netip.Addr {
	return netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x18, 15: byte(host)})
}

// AddRouter starts a router on the fabric. Nodes added afterwards route
// through the first router. It needs the Debian package bird2 (BIRD) or frr.
func (c *Cluster) AddRouter(ctx context.Context, o RouterOptions) (*Router, error) {
	if o.Kind != BIRD && o.Kind != FRR {
		return nil, fmt.Errorf("sandbox: router %q is unknown; use bird or frr", o.Kind)
	}
	if o.Host == 0 {
		o.Host = RouterHost
	}
	name := "router"
	if len(c.Routers) > 0 {
		name = fmt.Sprintf("router%d", len(c.Routers)+1)
	}
	r := &Router{
		Kind: o.Kind, Name: name, NS: c.opts.Name + "-" + name, IP: RouterIP(o.Host),
		dir: filepath.Join(c.opts.Dir, name), opts: o, c: c,
	}
	if c.opts.IPv6 {
		r.IPv6 = routerIPv6(o.Host)
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return nil, err
	}
	c.opts.logf("%s: namespace %s, %s at %s (AS %d)", name, r.NS, o.Kind, r.IP, RouterASN)
	if err := c.netns(r.NS); err != nil {
		return nil, err
	}
	c.Routers = append(c.Routers, r)
	port := "r" + strconv.Itoa(o.Host)
	if err := runAll(
		[]string{"ip", "-n", r.NS, "link", "set", "lo", "up"},
		[]string{"ip", "-n", r.NS, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", c.Fabric},
		[]string{"ip", "-n", c.Fabric, "link", "set", port, "master", segmentBridge(0), "up"},
		[]string{"ip", "-n", r.NS, "addr", "add", r.IP.String() + "/24", "dev", "eth0"},
		[]string{"ip", "-n", r.NS, "link", "set", "eth0", "up"},
		[]string{"ip", "netns", "exec", r.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
			"net.ipv4.fib_multipath_hash_policy=1", "net.ipv6.fib_multipath_hash_policy=1"},
	); err != nil {
		return nil, err
	}
	if r.IPv6.IsValid() {
		if err := run("ip", "-n", r.NS, "addr", "add", r.IPv6.String()+"/64", "dev", "eth0", "nodad"); err != nil {
			return nil, err
		}
	}
	if o.Outside {
		r.Outside = c.opts.Name + "-outside"
		if len(c.Routers) > 1 {
			r.Outside = c.opts.Name + "-outside" + strconv.Itoa(len(c.Routers))
		}
		if err := c.netns(r.Outside); err != nil {
			return nil, err
		}
		if err := runAll(
			[]string{"ip", "-n", r.Outside, "link", "set", "lo", "up"},
			[]string{"ip", "-n", r.Outside, "link", "add", "eth0", "type", "veth", "peer", "name", "outside", "netns", r.NS},
			[]string{"ip", "-n", r.NS, "addr", "add", OutsideGateway.String() + "/24", "dev", "outside"},
			[]string{"ip", "-n", r.NS, "link", "set", "outside", "up"},
			[]string{"ip", "-n", r.Outside, "addr", "add", OutsideClient.String() + "/24", "dev", "eth0"},
			[]string{"ip", "-n", r.Outside, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", r.Outside, "route", "add", "default", "via", OutsideGateway.String()},
		); err != nil {
			return nil, err
		}
	}
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// routerConf is what the configuration templates are given.
type routerConf struct {
	ID, Dir, Password string
	ASN, NodeASN      int
	Nodes             string // the nodes' range
	Announce          bool
	Outside           bool
}

func (r *Router) conf() routerConf {
	return routerConf{
		ID: r.IP.String(), Dir: r.dir, Password: r.opts.Password, ASN: RouterASN, NodeASN: NodeASN,
		Nodes: "198.18.0.0/24", Announce: r.opts.AnnounceOutside && r.opts.Outside, Outside: r.opts.Outside,
	}
}

// birdConf accepts every node of the range (BIRD's dynamic BGP), takes
// their pod subnets and service VIPs, and merges equal paths into
// multipath kernel routes.
var birdConf = template.Must(template.New("bird").Parse(`# BIRD 2 upstream router of a weft sandbox (written by internal/sandbox)
log "{{.Dir}}/bird.log" all;
router id {{.ID}};
protocol device { scan time 10; }
{{if .Outside}}protocol direct outside { ipv4; interface "outside"; }
{{end}}protocol kernel kernel4 {
  ipv4 { import none; export where source = RTS_BGP; };
  merge paths yes limit 16;
}
protocol kernel kernel6 {
  ipv6 { import none; export where source = RTS_BGP; };
  merge paths yes limit 16;
}
filter node_import4 { if net ~ [ 100.64.0.0/10+ ] then accept; reject; }
filter node_import6 { if net ~ [ fd96::/48+, fd64::/48+ ] then accept; reject; }
filter node_export4 { {{if .Announce}}if net = 203.0.113.0/24 then accept; {{end}}reject; }
template bgp weft_node {
  local {{.ID}} as {{.ASN}};
  debug { states, events };
  graceful restart yes;
  graceful restart time 120;
  ipv4 { import filter node_import4; export filter node_export4; };
  ipv6 { import filter node_import6; export none; };
}
protocol bgp nodes from weft_node {
  neighbor range {{.Nodes}} as {{.NodeASN}};
  dynamic name "node";
{{if .Password}}  password "{{.Password}}";
{{end}}}
`))

// frrConf is the same for FRR: a listen range, multipath, graceful
// restart helper.
var frrConf = template.Must(template.New("frr").Parse(`! FRR upstream router of a weft sandbox (written by internal/sandbox)
frr defaults traditional
hostname weft-router
log file {{.Dir}}/bgpd.log informational
log timestamp precision 3
!
ip prefix-list NODE-IN4 seq 5 permit 100.64.0.0/10 le 32
ipv6 prefix-list NODE-IN6 seq 5 permit fd96::/48 le 128
ipv6 prefix-list NODE-IN6 seq 10 permit fd64::/48 le 128
ip prefix-list OUTSIDE seq 5 permit 203.0.113.0/24
!
route-map NODES-IN4 permit 10
 match ip address prefix-list NODE-IN4
exit
route-map NODES-IN6 permit 10
 match ipv6 address prefix-list NODE-IN6
 set ipv6 next-hop prefer-global
exit
route-map NODES-OUT4 {{if .Announce}}permit{{else}}deny{{end}} 10
 match ip address prefix-list OUTSIDE
exit
route-map DENY-ALL deny 10
exit
!
router bgp {{.ASN}}
 bgp router-id {{.ID}}
 bgp log-neighbor-changes
 bgp graceful-restart
 bgp graceful-restart restart-time 120
 neighbor NODES peer-group
 neighbor NODES remote-as {{.NodeASN}}
{{if .Password}} neighbor NODES password {{.Password}}
{{end}} bgp listen range {{.Nodes}} peer-group NODES
 bgp listen limit 250
 !
 address-family ipv4 unicast
{{if .Outside}}  network 203.0.113.0/24
{{end}}  neighbor NODES activate
  neighbor NODES route-map NODES-IN4 in
  neighbor NODES route-map NODES-OUT4 out
  maximum-paths 16
 exit-address-family
 !
 address-family ipv6 unicast
  neighbor NODES activate
  neighbor NODES route-map NODES-IN6 in
  neighbor NODES route-map DENY-ALL out
  maximum-paths 16
 exit-address-family
exit
!
`))

// start writes the configuration and starts the daemons in the router's
// namespace, in the foreground, with their own sockets and pid files.
func (r *Router) start(ctx context.Context) error {
	conf := r.conf()
	switch r.Kind {
	case BIRD:
		if _, err := exec.LookPath("bird"); err != nil {
			return errors.New("sandbox: the router needs BIRD 2: apt-get install bird2 (scripts/need bird2)")
		}
		path := filepath.Join(r.dir, "bird.conf")
		if err := writeTemplate(path, birdConf, conf); err != nil {
			return err
		}
		p, err := r.c.start(r.NS, filepath.Join(r.dir, "bird.out"), "bird", "-f", "-c", path, "-s", r.birdSocket(), "-P", filepath.Join(r.dir, "bird.pid"))
		if err != nil {
			return err
		}
		r.procs = append(r.procs, p)
		return r.waitReady(ctx, func() error { _, err := r.birdc("show status"); return err })
	case FRR:
		if _, err := os.Stat("/usr/lib/frr/bgpd"); err != nil {
			return errors.New("sandbox: the router needs FRR: apt-get install frr (scripts/need frr)")
		}
		run := filepath.Join(r.dir, "run")
		if err := os.MkdirAll(run, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(r.dir, "zebra.conf"), []byte("hostname weft-router\nlog file "+r.dir+"/zebra.log informational\n"), 0o644); err != nil {
			return err
		}
		if err := writeTemplate(filepath.Join(r.dir, "bgpd.conf"), frrConf, conf); err != nil {
			return err
		}
		// FRR's daemons run as user frr: it reads the configuration and
		// writes its sockets there.
		if err := exec.Command("chown", "-R", "frr:frr", r.dir).Run(); err != nil {
			return fmt.Errorf("sandbox: chown frr %s: %w", r.dir, err)
		}
		if err := traversable(filepath.Dir(r.dir)); err != nil {
			return err
		}
		common := []string{"-u", "frr", "-g", "frr", "-z", filepath.Join(run, "zserv.api"), "--vty_socket", run, "-P", "0"}
		z, err := r.c.start(r.NS, filepath.Join(r.dir, "zebra.out"), "/usr/lib/frr/zebra",
			append([]string{"-f", filepath.Join(r.dir, "zebra.conf"), "-i", filepath.Join(run, "zebra.pid")}, common...)...)
		if err != nil {
			return err
		}
		r.procs = append(r.procs, z)
		if err := r.waitReady(ctx, func() error { _, err := os.Stat(filepath.Join(run, "zserv.api")); return err }); err != nil {
			return err
		}
		b, err := r.c.start(r.NS, filepath.Join(r.dir, "bgpd.out"), "/usr/lib/frr/bgpd",
			append([]string{"-f", filepath.Join(r.dir, "bgpd.conf"), "-i", filepath.Join(run, "bgpd.pid")}, common...)...)
		if err != nil {
			return err
		}
		r.procs = append(r.procs, b)
		return r.waitReady(ctx, func() error { _, err := r.Vtysh("show bgp summary json"); return err })
	}
	return nil
}

// traversable lets every user pass through dir and its parents (search
// permission only, no listing), so that FRR's daemons, which drop to user
// frr, reach their directory also below a test's private temporary one.
func traversable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("sandbox: FRR runs as user frr and cannot reach %s: %w", dir, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func writeTemplate(path string, t *template.Template, data any) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := t.Execute(f, data); err != nil {
		return err
	}
	return f.Close()
}

// waitReady waits until ready succeeds or a daemon exits.
func (r *Router) waitReady(ctx context.Context, ready func() error) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		for _, p := range r.procs {
			if p.exited() {
				return fmt.Errorf("%s: %s exited:\n%s", r.Name, r.Kind, tailFile(p.logPath, 2000))
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: %s not ready after 20s: %v", r.Name, r.Kind, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *Router) birdSocket() string { return filepath.Join(r.dir, "bird.ctl") }

// birdc runs a BIRD command.
func (r *Router) birdc(cmd string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", r.birdSocket()}, strings.Fields(cmd)...)...).CombinedOutput()
	return string(out), err
}

// Vtysh runs FRR commands (FRR routers only).
func (r *Router) Vtysh(cmds ...string) (string, error) {
	args := []string{"--vty_socket", filepath.Join(r.dir, "run")}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("vtysh", args...).CombinedOutput()
	return string(out), err
}

// Stop stops the router's daemons (SIGKILL: the kernel routes stay as they
// are, for the tests that look at them afterwards).
func (r *Router) Stop() {
	for i := len(r.procs) - 1; i >= 0; i-- {
		r.procs[i].stop(syscall.SIGKILL)
	}
	r.procs = nil
}

// PIDs returns the process ids of the router's daemons.
func (r *Router) PIDs() []int {
	var pids []int
	for _, p := range r.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return pids
}

// SetAnnounceOutside makes the router advertise (or stop advertising) the
// outside network to the nodes, without resetting a session.
func (r *Router) SetAnnounceOutside(on bool) error {
	r.opts.AnnounceOutside = on
	switch r.Kind {
	case BIRD:
		if err := writeTemplate(filepath.Join(r.dir, "bird.conf"), birdConf, r.conf()); err != nil {
			return err
		}
		out, err := r.birdc("configure")
		if err != nil || !strings.Contains(out, "onfigur") {
			return fmt.Errorf("birdc configure: %v: %s", err, out)
		}
	case FRR:
		action := "deny"
		if on {
			action = "permit"
		}
		if out, err := r.Vtysh("configure terminal", "route-map NODES-OUT4 "+action+" 10", "match ip address prefix-list OUTSIDE", "end", "clear bgp * soft out"); err != nil {
			return fmt.Errorf("vtysh: %v: %s", err, out)
		}
	}
	return nil
}

// Route is a route in the router's kernel table: a destination and its
// next hops (several for a multipath route).
type Route struct {
	Dst      netip.Prefix
	NextHops []netip.Addr
}

// Routes reads the routes the router's daemon installed in its kernel,
// IPv4 and IPv6, by destination.
func (r *Router) Routes(ctx context.Context) (map[netip.Prefix]Route, error) {
	proto := map[string]string{BIRD: "bird", FRR: "bgp"}[r.Kind]
	routes := map[netip.Prefix]Route{}
	for _, family := range []string{"-4", "-6"} {
		out, err := exec.CommandContext(ctx, "ip", "-n", r.NS, "-j", family, "route", "show", "proto", proto).Output()
		if err != nil {
			return nil, fmt.Errorf("ip route in %s: %w", r.NS, err)
		}
		var list []struct {
			Dst      string `json:"dst"`
			Gateway  string `json:"gateway"`
			Nexthops []struct {
				Gateway string `json:"gateway"`
			} `json:"nexthops"`
		}
		if len(out) > 0 {
			if err := json.Unmarshal(out, &list); err != nil {
				return nil, fmt.Errorf("ip -j route in %s: %w", r.NS, err)
			}
		}
		for _, e := range list {
			dst, err := netip.ParsePrefix(e.Dst)
			if err != nil {
				a, aerr := netip.ParseAddr(e.Dst)
				if aerr != nil {
					continue
				}
				dst = netip.PrefixFrom(a, a.BitLen())
			}
			rt := Route{Dst: dst}
			gws := []string{e.Gateway}
			for _, nh := range e.Nexthops {
				gws = append(gws, nh.Gateway)
			}
			for _, g := range gws {
				if a, err := netip.ParseAddr(g); err == nil {
					rt.NextHops = append(rt.NextHops, a)
				}
			}
			routes[dst] = rt
		}
	}
	return routes, nil
}

// Established returns the nodes' addresses whose session with the router
// is up.
func (r *Router) Established() ([]netip.Addr, error) {
	var up []netip.Addr
	switch r.Kind {
	case BIRD:
		out, err := r.birdc("show protocols all")
		if err != nil {
			return nil, fmt.Errorf("birdc: %v: %s", err, out)
		}
		// Each dynamic protocol: "nodeN BGP --- up ... Established" and,
		// below it, "Neighbor address: 198.18.0.1".
		established := false
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && strings.HasPrefix(f[0], "node") && f[1] == "BGP" {
				established = strings.Contains(l, "Established")
			}
			if a, ok := strings.CutPrefix(strings.TrimSpace(l), "Neighbor address:"); ok && established {
				if ip, err := netip.ParseAddr(strings.TrimSpace(a)); err == nil {
					up = append(up, ip)
				}
			}
		}
	case FRR:
		out, err := r.Vtysh("show bgp summary json")
		if err != nil {
			return nil, fmt.Errorf("vtysh: %v: %s", err, out)
		}
		var sum struct {
			IPv4Unicast struct {
				Peers map[string]struct {
					State string `json:"state"`
				} `json:"peers"`
			} `json:"ipv4Unicast"`
		}
		if err := json.Unmarshal([]byte(out), &sum); err != nil {
			return nil, fmt.Errorf("vtysh show bgp summary json: %w", err)
		}
		for addr, p := range sum.IPv4Unicast.Peers {
			if ip, err := netip.ParseAddr(strings.TrimPrefix(addr, "*")); err == nil && p.State == "Established" {
				up = append(up, ip)
			}
		}
	}
	return up, nil
}
