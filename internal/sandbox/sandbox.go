// Package sandbox builds a weft cluster on one machine out of network
// namespaces, for the end-to-end tests, `weftctl sandbox` and the demo:
//
//	fabric netns: bridge br0 198.18.0.254/24, etcd on :2379
//	  ├── node-1 netns: eth0 198.18.0.1, weftd, cni0 <subnet .1> ── pod netns …
//	  ├── node-2 netns: eth0 198.18.0.2, …
//	  └── node-N
//
// Nothing is added to the machine's own namespace: every device, address
// and route lives in a namespace the sandbox made, and Down removes them
// all with the processes it started.
package sandbox

import (
	"bytes"
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
	"time"

	"github.com/weft-net/weft/subnet"
)

// Options describes a cluster.
type Options struct {
	// Name prefixes every namespace the cluster makes ("weft" makes
	// weft-fabric, weft-node-1, …). Keep it short and unique.
	Name string
	// Dir holds etcd's data, each node's subnet.env and the logs.
	Dir string
	// BinDir holds weftd, weftctl, weft (the CNI plugin) and weft-etcd.
	BinDir string
	// Nodes to start with.
	Nodes int
	// NetConf is net-conf.json; default: 100.96.0.0/12 with Backend.
	NetConf string
	// Backend type for the default NetConf (default vxlan).
	Backend string
	// IPMasq passes --ip-masq to every weftd.
	IPMasq bool
	// LeaseTTL passes --lease-ttl (default: weftd's).
	LeaseTTL time.Duration
	// IPv6 gives the underlay IPv6 addresses too (fd18::/64); use it with
	// a NetConf that enables IPv6.
	IPv6 bool
	// ResyncInterval passes --resync-interval (default 2s, so that tests
	// see drift repaired quickly; benchmarks use weftd's own default).
	ResyncInterval time.Duration
	// EtcdMembers is the size of the etcd cluster (default 1).
	EtcdMembers int
	// EtcdFsync makes etcd sync its log to disk on every commit, as a
	// production etcd does; tests skip it (--unsafe-no-fsync) for speed.
	EtcdFsync bool
	// ConfigFiles gives every node its own net-conf.json file
	// (--net-config-path), laid out as a Kubernetes ConfigMap volume is, so
	// that SetNodeConfig can update it the way the kubelet does.
	ConfigFiles bool
	// Router adds an upstream router (BIRD or FRR) with an outside network
	// before the nodes, and a BGP object peering with it to NetConf (unless
	// NetConf has one).
	Router string
	// RouterPassword is the TCP MD5 password of the router's sessions;
	// every weftd gets it as WEFTD_BGP_PASSWORD.
	RouterPassword string
	// GracefulRestartTime goes into the BGP object the router adds (0:
	// weftd's default).
	GracefulRestartTime time.Duration
	// Env is added to every weftd's environment.
	Env []string
	// Kube runs a Kubernetes control plane (kube-apiserver and
	// kube-controller-manager from BinDir, make kube-bins) and every weftd
	// with --kube-subnet-mgr: subnets are the Nodes' podCIDRs (kube.go).
	Kube bool
	// Detach starts processes in sessions of their own so that they outlive
	// the caller (weftctl sandbox up); otherwise they die with it.
	Detach bool
	// Log receives one line per step; may be nil.
	Log func(format string, args ...any)
}

// Cluster is a running sandbox. Its methods are not safe for concurrent use.
type Cluster struct {
	opts    Options
	Fabric  string     // fabric namespace
	etcd    []*process // one per member; nil while stopped
	Nodes   []*Node
	Routers []*Router
	kube    *kubePlane // with Options.Kube
	// added counts nodes ever added, so a new node never reuses the name
	// or address of one that left.
	added int
}

// Node is one node namespace running weftd.
type Node struct {
	Name       string     // node-1
	NS         string     // its namespace
	Segment    int        // underlay segment: 0 is 198.18.0.0/24, 1 is 198.18.1.0/24
	IPv6       netip.Addr // fd18::<n> with Options.IPv6, on segment 0
	IP         netip.Addr
	SubnetFile string
	LogFile    string
	// Env is added to this node's weftd's environment (after
	// Options.Env); Args to its command line (they win over the
	// sandbox's own flags).
	Env   []string
	Args  []string
	weftd *process
	Pods  []*Pod
	// registered: its Node object exists (Options.Kube).
	registered bool
}

// Pod is a namespace on a node's cni0 bridge with an address from the
// node's subnet.
type Pod struct {
	Name string
	NS   string
	IP   netip.Addr // the first address the CNI plugin gave (IPv4 if any)
	IPv6 netip.Addr // its IPv6 address on a dual-stack network
	Node *Node
}

// healthAddr is where each weftd serves /readyz and /status inside its
// node's namespace.
const healthAddr = "127.0.0.1:8285"

// FabricIP is the fabric bridge's address, where etcd listens; FabricIPv6
// its IPv6 address with Options.IPv6.
var (
	FabricIP   = netip.MustParseAddr("198.18.0.254")
	FabricIPv6 = netip.MustParseAddr("fd18::fe")
)

// EtcdEndpoint is etcd's client URL as nodes see it.
func (c *Cluster) EtcdEndpoint() string { return "http://" + FabricIP.String() + ":2379" }

func (o *Options) logf(format string, args ...any) {
	if o.Log != nil {
		o.Log(format, args...)
	}
}

// Up builds the fabric, starts etcd, writes the network configuration and
// starts opts.Nodes nodes, waiting until each is ready. On error it tears
// down what it built.
func Up(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Name == "" {
		opts.Name = "weft"
	}
	if opts.Backend == "" {
		opts.Backend = subnet.BackendVXLAN
	}
	if opts.NetConf == "" {
		opts.NetConf = NetConf(opts.Backend, false)
	}
	if opts.Router != "" {
		conf, err := withBGP(opts.NetConf, opts.GracefulRestartTime)
		if err != nil {
			return nil, err
		}
		opts.NetConf = conf
		if opts.RouterPassword != "" {
			opts.Env = append(opts.Env, "WEFTD_BGP_PASSWORD="+opts.RouterPassword)
		}
	}
	if _, _, err := subnet.ParseConfig([]byte(opts.NetConf)); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	c = &Cluster{opts: opts, Fabric: opts.Name + "-fabric"}
	defer func() {
		if err != nil {
			c.Down()
			c = nil
		}
	}()

	opts.logf("fabric: namespace %s, bridge br0 %s/24", c.Fabric, FabricIP)
	if err := c.netns(c.Fabric); err != nil {
		return c, err
	}
	if err := runAll(
		[]string{"ip", "-n", c.Fabric, "link", "set", "lo", "up"},
		[]string{"ip", "-n", c.Fabric, "link", "add", "br0", "type", "bridge"},
		[]string{"ip", "-n", c.Fabric, "addr", "add", FabricIP.String() + "/24", "dev", "br0"},
		[]string{"ip", "-n", c.Fabric, "link", "set", "br0", "up"},
	); err != nil {
		return c, err
	}
	if opts.IPv6 {
		if err := run("ip", "-n", c.Fabric, "addr", "add", FabricIPv6.String()+"/64", "dev", "br0", "nodad"); err != nil {
			return c, err
		}
	}

	opts.logf("etcd: %s in %s", c.EtcdEndpoints(), c.Fabric)
	if err := c.StartEtcd(ctx); err != nil {
		return c, err
	}
	if err := c.SetNetConf(ctx, opts.NetConf); err != nil {
		return c, err
	}
	if opts.Kube {
		opts.logf("kubernetes: kube-apiserver at %s, kube-controller-manager, in %s", KubeAPI(), c.Fabric)
		if err := c.startKube(ctx); err != nil {
			return c, err
		}
	}
	if opts.Router != "" {
		if _, err := c.AddRouter(ctx, RouterOptions{Kind: opts.Router, Password: opts.RouterPassword, Outside: true}); err != nil {
			return c, err
		}
	}
	for range opts.Nodes {
		if _, err := c.AddNode(ctx); err != nil {
			return c, err
		}
	}
	return c, nil
}

// NetConf is the sandbox's net-conf.json: the pod network 100.96.0.0/12
// (and fd96::/48 with ipv6) with backend, and services' networks.
func NetConf(backend string, ipv6 bool) string {
	if ipv6 {
		return fmt.Sprintf(`{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48","ServiceNetwork":%q,"ServiceIPv6Network":%q,"Backend":{"Type":%q}}`,
			ServiceNetwork, ServiceIPv6Network, backend)
	}
	return fmt.Sprintf(`{"Network":"100.96.0.0/12","ServiceNetwork":%q,"Backend":{"Type":%q}}`, ServiceNetwork, backend)
}

// The sandbox's service networks (VIPs are allocated from them).
const (
	ServiceNetwork     = "100.64.0.0/16"
	ServiceIPv6Network = "fd64::/108"
)

// withBGP adds to conf a BGP object that peers with the sandbox's router,
// unless conf has one.
func withBGP(conf string, restart time.Duration) (string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(conf), &m); err != nil {
		return "", fmt.Errorf("sandbox: net-conf.json: %w", err)
	}
	for k := range m {
		if strings.EqualFold(k, "BGP") {
			return conf, nil
		}
	}
	bgp := map[string]any{"ASN": NodeASN, "Peers": []map[string]any{{"Address": RouterIP(RouterHost).String(), "ASN": RouterASN}}}
	if restart > 0 {
		bgp["GracefulRestartTime"] = int(restart / time.Second)
	}
	b, err := json.Marshal(bgp)
	if err != nil {
		return "", err
	}
	m["BGP"] = b
	out, err := json.Marshal(m)
	return string(out), err
}

// etcdMembers is how many etcd members the cluster runs.
func (c *Cluster) etcdMembers() int { return max(c.opts.EtcdMembers, 1) }

// EtcdEndpoints are the members' client URLs, comma-separated, as weftd's
// --etcd-endpoints takes them.
func (c *Cluster) EtcdEndpoints() string {
	var eps []string
	for i := range c.etcdMembers() {
		eps = append(eps, c.memberClientURL(i))
	}
	return strings.Join(eps, ",")
}

func (c *Cluster) memberClientURL(i int) string {
	return fmt.Sprintf("http://%s:%d", FabricIP, 2379+2*i)
}

func (c *Cluster) memberPeerURL(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", 2380+2*i) }

// StartEtcd starts every etcd member that is not running (again, after
// StopEtcd, on the same data) and waits until they serve clients.
func (c *Cluster) StartEtcd(ctx context.Context) error {
	if c.etcd == nil {
		c.etcd = make([]*process, c.etcdMembers())
	}
	var started []int
	for i := range c.etcd {
		if c.etcd[i] != nil {
			continue
		}
		if err := c.startMember(i); err != nil {
			return err
		}
		started = append(started, i)
	}
	for _, i := range started { // members wait for each other's quorum
		if err := c.etcd[i].waitForOutput(ctx, "ready", 60*time.Second); err != nil {
			return fmt.Errorf("etcd member %d: %w", i, err)
		}
	}
	return nil
}

func (c *Cluster) startMember(i int) error {
	var cluster []string
	for j := range c.etcdMembers() {
		cluster = append(cluster, fmt.Sprintf("m%d=%s", j, c.memberPeerURL(j)))
	}
	logPath := filepath.Join(c.opts.Dir, fmt.Sprintf("etcd-%d.log", i))
	if c.etcdMembers() == 1 {
		logPath = filepath.Join(c.opts.Dir, "etcd.log")
	}
	os.Remove(logPath) // readiness is read from the log
	p, err := c.start(c.Fabric, logPath, filepath.Join(c.opts.BinDir, "weft-etcd"),
		"--name", fmt.Sprintf("m%d", i),
		"--data-dir", filepath.Join(c.opts.Dir, fmt.Sprintf("etcd-%d", i)),
		"--listen-client-urls", c.memberClientURL(i),
		"--listen-peer-urls", c.memberPeerURL(i),
		"--initial-cluster", strings.Join(cluster, ","),
		"--unsafe-no-fsync="+strconv.FormatBool(!c.opts.EtcdFsync))
	if err != nil {
		return err
	}
	c.etcd[i] = p
	return nil
}

// StopEtcdMember stops member i; with three members, one can go without
// losing quorum.
func (c *Cluster) StopEtcdMember(i int) {
	if i < len(c.etcd) && c.etcd[i] != nil {
		c.etcd[i].stop(syscall.SIGTERM)
		c.etcd[i] = nil
	}
}

// StopEtcd stops every member; the nodes lose etcd until StartEtcd.
func (c *Cluster) StopEtcd() {
	for i := range c.etcd {
		c.StopEtcdMember(i)
	}
}

// SetNetConf writes net-conf.json to etcd with the weftctl next to weftd;
// flags go to 'weftctl config set'.
func (c *Cluster) SetNetConf(ctx context.Context, conf string, flags ...string) error {
	args := append([]string{"netns", "exec", c.Fabric, filepath.Join(c.opts.BinDir, "weftctl"),
		"--etcd-endpoints", c.EtcdEndpoints(), "config", "set"}, flags...)
	cmd := exec.CommandContext(ctx, "ip", append(args, "-")...)
	cmd.Stdin = strings.NewReader(conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("weftctl config set: %v: %s", err, out)
	}
	return nil
}

// Weftctl runs weftctl against the cluster's etcd and returns its output.
func (c *Cluster) Weftctl(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"netns", "exec", c.Fabric, filepath.Join(c.opts.BinDir, "weftctl"), "--etcd-endpoints", c.EtcdEndpoints()}, args...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	return string(out), err
}

// AddNode creates the next node on the first underlay segment and waits
// until its weftd is ready.
func (c *Cluster) AddNode(ctx context.Context) (*Node, error) { return c.AddNodeOn(ctx, 0) }

// segmentRouter is the fabric's address on each underlay segment; the
// fabric namespace routes between the segments, so nodes on different
// segments reach each other only through a router, as on two LANs.
func segmentRouter(seg int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(seg), 254}) }

func segmentBridge(seg int) string { return fmt.Sprintf("br%d", seg) }

// ensureSegment creates the fabric bridge of segment seg (>0) on first use.
func (c *Cluster) ensureSegment(seg int) error {
	if seg == 0 {
		return nil
	}
	if err := run("ip", "-n", c.Fabric, "link", "show", segmentBridge(seg)); err == nil {
		return nil
	}
	c.opts.logf("fabric: segment %d, bridge %s %s/24, routing between segments", seg, segmentBridge(seg), segmentRouter(seg))
	return runAll(
		[]string{"ip", "-n", c.Fabric, "link", "add", segmentBridge(seg), "type", "bridge"},
		[]string{"ip", "-n", c.Fabric, "addr", "add", segmentRouter(seg).String() + "/24", "dev", segmentBridge(seg)},
		[]string{"ip", "-n", c.Fabric, "link", "set", segmentBridge(seg), "up"},
		[]string{"ip", "netns", "exec", c.Fabric, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
	)
}

// AddNodeOn creates the next node on underlay segment seg (0 or 1) and
// waits until its weftd is ready.
func (c *Cluster) AddNodeOn(ctx context.Context, seg int) (*Node, error) {
	if seg < 0 || seg > 1 {
		return nil, fmt.Errorf("sandbox: segment %d does not exist; use 0 or 1", seg)
	}
	n, err := c.PrepareNode(seg)
	if err != nil {
		return nil, err
	}
	if err := c.StartWeftd(ctx, n); err != nil {
		return nil, err
	}
	return n, nil
}

// PrepareNode makes the next node's namespace and underlay on segment seg,
// without starting weftd.
func (c *Cluster) PrepareNode(seg int) (*Node, error) {
	if err := c.ensureSegment(seg); err != nil {
		return nil, err
	}
	c.added++
	i := c.added
	if i > 250 {
		return nil, errors.New("sandbox: at most 250 nodes")
	}
	n := &Node{
		Name:    "node-" + strconv.Itoa(i),
		NS:      fmt.Sprintf("%s-node-%d", c.opts.Name, i),
		IP:      netip.AddrFrom4([4]byte{198, 18, byte(seg), byte(i)}),
		Segment: seg,
	}
	dir := filepath.Join(c.opts.Dir, n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	n.SubnetFile = filepath.Join(dir, "subnet.env")
	n.LogFile = filepath.Join(dir, "weftd.log")
	os.Remove(n.SubnetFile)
	c.opts.logf("%s: namespace %s, eth0 %s", n.Name, n.NS, n.IP)
	if err := c.netns(n.NS); err != nil {
		return nil, err
	}
	c.Nodes = append(c.Nodes, n)
	fabricPort := fmt.Sprintf("n%d", i)
	gateway, gateway6 := segmentRouter(seg), FabricIPv6
	if len(c.Routers) > 0 && seg == 0 { // a rack's nodes route through their router
		gateway, gateway6 = c.Routers[0].IP, c.Routers[0].IPv6
	}
	if err := runAll(
		[]string{"ip", "-n", n.NS, "link", "set", "lo", "up"},
		[]string{"ip", "-n", n.NS, "link", "add", "eth0", "type", "veth", "peer", "name", fabricPort, "netns", c.Fabric},
		[]string{"ip", "-n", c.Fabric, "link", "set", fabricPort, "master", segmentBridge(seg), "up"},
		[]string{"ip", "-n", n.NS, "addr", "add", n.IP.String() + "/24", "dev", "eth0"},
		[]string{"ip", "-n", n.NS, "link", "set", "eth0", "up"},
		[]string{"ip", "-n", n.NS, "route", "add", "default", "via", gateway.String()},
	); err != nil {
		return nil, err
	}
	if c.opts.IPv6 && seg == 0 {
		n.IPv6 = netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x18, 15: byte(i)})
		if err := runAll(
			[]string{"ip", "-n", n.NS, "addr", "add", n.IPv6.String() + "/64", "dev", "eth0", "nodad"},
			[]string{"ip", "-n", n.NS, "-6", "route", "add", "default", "via", gateway6.String()},
		); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// AddNodes adds count nodes on segment 0 and starts all their daemons at
// once, as when a whole cluster boots; it waits until every one is ready.
func (c *Cluster) AddNodes(ctx context.Context, count int) ([]*Node, error) {
	start := make(chan struct{})
	type result struct {
		n   *Node
		err error
	}
	results := make(chan result, count)
	var nodes []*Node
	for range count {
		n, err := c.PrepareNode(0)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
		go func() {
			<-start
			results <- result{n, c.StartWeftd(ctx, n)}
		}()
	}
	close(start)
	var errs []error
	for range count {
		if r := <-results; r.err != nil {
			errs = append(errs, r.err)
		}
	}
	return nodes, errors.Join(errs...)
}

// startWeftd starts weftd on n.
func (c *Cluster) startWeftd(n *Node) (*process, error) {
	args := []string{"--etcd-endpoints", c.EtcdEndpoints()}
	if c.opts.Kube {
		if !n.registered {
			if err := c.RegisterKubeNode(context.Background(), n); err != nil {
				return nil, err
			}
		}
		args = []string{"--kube-subnet-mgr", "--kubeconfig-file", c.WeftdKubeconfig()}
	}
	args = append(args,
		"--iface", "eth0",
		"--node-name", n.Name,
		"--subnet-file", n.SubnetFile,
		"--healthz-addr", healthAddr,
		"--resync-interval", c.resyncInterval(),
	)
	if c.opts.IPMasq {
		args = append(args, "--ip-masq")
	}
	if c.opts.LeaseTTL != 0 {
		args = append(args, "--lease-ttl", c.opts.LeaseTTL.String())
	}
	if c.opts.ConfigFiles || c.opts.Kube {
		path := c.configPath(n)
		if _, err := os.Stat(path); err != nil {
			if err := c.SetNodeConfig(n, c.opts.NetConf); err != nil {
				return nil, err
			}
		}
		args = append(args, "--net-config-path", path)
	}
	args = append(args, n.Args...)
	return c.startEnv(n.NS, n.LogFile, append(append([]string(nil), c.opts.Env...), n.Env...), filepath.Join(c.opts.BinDir, "weftd"), args...)
}

// StartWeftd starts weftd on n and waits until it reports ready.
func (c *Cluster) StartWeftd(ctx context.Context, n *Node) error {
	var err error
	n.weftd, err = c.startWeftd(n)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if st, err := c.Status(n); err == nil && st.Ready {
			return nil
		}
		if n.weftd.exited() {
			return fmt.Errorf("%s: weftd exited before it was ready:\n%s", n.Name, tailFile(n.LogFile, 2000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: weftd not ready after 60s:\n%s", n.Name, tailFile(n.LogFile, 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) configPath(n *Node) string {
	return filepath.Join(filepath.Dir(n.SubnetFile), "config", "net-conf.json")
}

// SetNodeConfig writes n's net-conf.json file as the kubelet updates a
// ConfigMap volume: the data goes into a new timestamped directory, the
// symlink ..data is swapped to it atomically, and net-conf.json is a
// symlink through ..data.
func (c *Cluster) SetNodeConfig(n *Node, conf string) error {
	dir := filepath.Dir(c.configPath(n))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	stamp := fmt.Sprintf("..%d", time.Now().UnixNano())
	if err := os.Mkdir(filepath.Join(dir, stamp), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, stamp, "net-conf.json"), []byte(conf), 0o644); err != nil {
		return err
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(stamp, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	if old != "" {
		os.RemoveAll(filepath.Join(dir, old))
	}
	link := filepath.Join(dir, "net-conf.json")
	if _, err := os.Lstat(link); err != nil {
		return os.Symlink(filepath.Join("..data", "net-conf.json"), link)
	}
	return nil
}

// StopWeftd stops n's weftd with sig (SIGTERM or SIGKILL), waits, and
// returns its exit status (-1 if it died of a signal or was not running).
func (c *Cluster) StopWeftd(n *Node, sig syscall.Signal) int {
	if n.weftd == nil {
		return -1
	}
	n.weftd.stop(sig)
	code := n.weftd.cmd.ProcessState.ExitCode()
	n.weftd = nil
	return code
}

// Subnets reads the node's IPv4 and IPv6 subnets from its subnet.env
// (invalid for a family the node has none of).
func (n *Node) Subnets() (v4, v6 netip.Prefix, err error) {
	env, err := subnet.ReadEnvFile(n.SubnetFile)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, err
	}
	return env.Subnet.Masked(), env.IPv6Subnet.Masked(), nil
}

// Subnet reads the node's IPv4 subnet from its subnet.env.
func (n *Node) Subnet() (netip.Prefix, error) {
	v4, _, err := n.Subnets()
	return v4, err
}

// AddPod creates a pod namespace on n and wires it in with the weft CNI
// plugin, as a container runtime would (ADD, with the node's subnet.env).
func (c *Cluster) AddPod(n *Node) (*Pod, error) {
	k := len(n.Pods) + 1
	p := &Pod{Name: fmt.Sprintf("%s-pod-%d", n.Name, k), NS: fmt.Sprintf("%s-p%d", n.NS, k), Node: n}
	if err := c.netns(p.NS); err != nil {
		return nil, err
	}
	n.Pods = append(n.Pods, p)
	if err := run("ip", "-n", p.NS, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	out, err := c.cni(n, p, "ADD")
	if err != nil {
		return nil, err
	}
	var res struct {
		IPs []struct{ Address string } `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		return nil, fmt.Errorf("%s: CNI result %s: %v", p.Name, out, err)
	}
	for _, a := range res.IPs {
		pfx, err := netip.ParsePrefix(a.Address)
		if err != nil {
			return nil, fmt.Errorf("%s: CNI result address %q: %w", p.Name, a.Address, err)
		}
		if !p.IP.IsValid() {
			p.IP = pfx.Addr()
		}
		if pfx.Addr().Is6() {
			p.IPv6 = pfx.Addr()
		}
	}
	return p, nil
}

// cni runs the weft CNI plugin in n's namespace for pod p.
func (c *Cluster) cni(n *Node, p *Pod, command string) ([]byte, error) {
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft","subnetFile":%q,"dataDir":%q}`,
		n.SubnetFile, filepath.Join(filepath.Dir(n.SubnetFile), "ipam"))
	cmd := exec.Command("ip", "netns", "exec", n.NS, filepath.Join(c.opts.BinDir, "weft"))
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command, "CNI_CONTAINERID="+p.NS, "CNI_NETNS=/run/netns/"+p.NS,
		"CNI_IFNAME=eth0", "CNI_PATH="+c.opts.BinDir)
	cmd.Stdin = strings.NewReader(conf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: CNI %s: %v: %s%s", p.Name, command, err, out, stderr.Bytes())
	}
	return out, nil
}

// Pods returns every pod of every node.
func (c *Cluster) Pods() []*Pod {
	var ps []*Pod
	for _, n := range c.Nodes {
		ps = append(ps, n.Pods...)
	}
	return ps
}

// RemoveNode stops n's weftd and deletes its namespaces. Its lease stays in
// etcd until it expires or is deleted, as when a machine dies; in
// Kubernetes mode its Node object is deleted, as when a node is drained
// and removed.
func (c *Cluster) RemoveNode(n *Node) {
	if c.kube != nil {
		c.DeleteKubeNode(context.Background(), n)
	}
	c.StopWeftd(n, syscall.SIGKILL)
	for _, p := range n.Pods {
		delNetns(p.NS)
	}
	delNetns(n.NS)
	for i, m := range c.Nodes {
		if m == n {
			c.Nodes = append(c.Nodes[:i], c.Nodes[i+1:]...)
			break
		}
	}
}

// Down stops every process and deletes every namespace of the cluster. It
// is safe to call more than once and on a half-built cluster.
func (c *Cluster) Down() {
	for _, n := range c.Nodes {
		c.StopWeftd(n, syscall.SIGTERM)
	}
	for _, r := range c.Routers {
		r.Stop()
	}
	c.Routers = nil
	c.stopKube()
	c.StopEtcd()
	DeleteNamespaces(c.opts.Name)
	c.Nodes = nil
}

// DeleteNamespaces deletes every namespace whose name starts with
// name+"-", which removes the devices in them.
func DeleteNamespaces(name string) {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], name+"-") {
			delNetns(f[0])
		}
	}
}

// Exec runs a command inside namespace ns and returns its combined output.
func Exec(ctx context.Context, ns string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *Cluster) netns(name string) error {
	delNetns(name) // a leftover of a crashed run
	return run("ip", "netns", "add", name)
}

func delNetns(name string) { exec.Command("ip", "netns", "del", name).Run() }

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func runAll(cmds ...[]string) error {
	for _, c := range cmds {
		if err := run(c...); err != nil {
			return err
		}
	}
	return nil
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// WeftdPID returns the process id of n's weftd, or 0.
func (n *Node) WeftdPID() int {
	if n.weftd == nil {
		return 0
	}
	return n.weftd.cmd.Process.Pid
}

// StartWeftdAsync starts weftd on n and returns at once; Status tells
// when it is ready.
func (c *Cluster) StartWeftdAsync(n *Node) error {
	p, err := c.startWeftd(n)
	n.weftd = p
	return err
}

func (c *Cluster) resyncInterval() string {
	if c.opts.ResyncInterval > 0 {
		return c.opts.ResyncInterval.String()
	}
	return "2s"
}
