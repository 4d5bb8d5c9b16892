package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/bgp"
	"github.com/weft-net/weft/internal/etcdwatch"
	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/internal/mailbox"
	"github.com/weft-net/weft/internal/netmon"
	"github.com/weft-net/weft/internal/proxy"
	"github.com/weft-net/weft/internal/reconcile"
	"github.com/weft-net/weft/internal/version"
	"github.com/weft-net/weft/service"
	svcetcd "github.com/weft-net/weft/service/etcd"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcd"
)

// Run is weftd. It starts every goroutine it needs in one errgroup and
// returns when ctx ends (nil) or something fails for good, after all of
// them have ended. Start-up, in order: health server, etcd client, network
// configuration, external interface, the primary backend's devices, the
// subnet lease; then the goroutines that keep it all current (see
// docs/architecture.md): the configuration watch, the lease keeper, the
// lease watch, the network monitor, the reconciler, the service watch and
// proxy, and the announcer,
// which installs the nftables table, writes subnet.env and reports ready
// once the first listing's peers are programmed. On return the kernel
// state is left as it is, so pods keep working while weftd restarts.
// Errors that come from bad flags or configuration are *InvalidError or
// *subnet.ConfigError.
func Run(ctx context.Context, cfg *Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	d := &daemon{cfg: cfg, log: logrus.NewEntry(cfg.Log)}
	v := version.Get()
	d.log.WithFields(logrus.Fields{"version": v.Version, "commit": v.Commit, "go": v.GoVersion, "node": cfg.NodeName}).Info("starting weftd")
	d.board.set(func(b *board) { b.notReady = "starting" })
	d.metrics = newMetrics(d)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	// Serve health at once: /healthz says the process lives, /readyz why
	// it is not ready yet (waiting for etcd, say).
	// The metrics address, reachable by a cluster's Prometheus, has no
	// /status (it names this node's addresses and peers).
	for _, srv := range []struct {
		flag, addr string
		withStatus bool
	}{{"--healthz-addr", cfg.HealthzAddr, true}, {"--metrics-addr", cfg.MetricsAddr, false}} {
		if srv.addr == "" {
			continue
		}
		l, err := net.Listen("tcp", srv.addr)
		if err != nil {
			return invalid("%s %s: %v", srv.flag, srv.addr, err)
		}
		serveHealth(ctx, g, l, d, srv.withStatus)
	}
	g.Go(func() error { <-ctx.Done(); d.board.stop(); return nil }) // STOPPING=1 as shutdown begins
	err := d.start(ctx, g)
	if err != nil {
		cancel()
	}
	if werr := g.Wait(); err == nil {
		err = werr
	}
	for i := len(d.closers) - 1; i >= 0; i-- { // after every goroutine ended
		d.closers[i]()
	}
	if errors.Is(err, context.Canceled) {
		return nil // told to stop
	}
	return err
}

// daemon is one Run: its configuration, and what the health server reads
// while the goroutines run. Each field below the line is set once during
// start-up and read by the health server, hence atomic.
type daemon struct {
	cfg     *Config
	log     *logrus.Entry
	metrics *metrics
	board   board    // readiness, and a refused configuration document
	closers []func() // what start opened, for Run to close at the end

	source  atomic.Pointer[leaseSource]
	rec     atomic.Pointer[reconcile.Reconciler]
	claim   atomic.Pointer[leaseClaim]
	speaker atomic.Pointer[bgp.Speaker] // nil when BGP is off
	proxy   atomic.Pointer[proxy.Proxy]
	svcs    atomic.Pointer[svcetcd.Store]
	etcd    atomic.Pointer[clientv3.Client] // nil in Kubernetes mode
}

// start brings the node up to the point where its lease is held, then
// starts the goroutines that keep everything current in g.
func (d *daemon) start(ctx context.Context, g *errgroup.Group) error {
	cfg := d.cfg
	// Leases come from etcd, or from the Kubernetes API (then there is no
	// etcd: no etcd configuration, no services).
	var (
		source leaseSource
		store  *etcd.Store
		cli    *clientv3.Client
	)
	if cfg.Kube.Enabled {
		ks, err := d.kubeSource()
		if err != nil {
			return err
		}
		source = ks
	} else {
		d.board.set(func(b *board) { b.notReady = "connecting to etcd" })
		var err error
		ecfg := cfg.Etcd
		ecfg.DialOptions = append(ecfg.DialOptions, d.metrics.etcd.dialOptions()...)
		if cli, err = connect(ctx, ecfg, d.log.WithField("component", "store")); err != nil {
			return err
		}
		d.etcd.Store(cli)
		d.closers = append(d.closers, func() { cli.Close() })
		store = etcd.New(cli, etcd.Options{Prefix: cfg.Prefix, TTL: cfg.LeaseTTL, Log: d.log.WithField("component", "store")})
		source = &etcdLeases{store: store, subnetFile: cfg.SubnetFile, waiting: func(err error) {
			d.board.set(func(b *board) { b.notReady = "acquiring a subnet lease: " + err.Error() })
		}}
	}
	d.source.Store(&source)

	d.board.set(func(b *board) { b.notReady = "reading the network configuration" })
	network, err := d.readNetConfig(ctx, store)
	if err != nil {
		return err
	}

	// Each owner of netlink work gets a handle of its own: the reconciler
	// (backends, kernel layer) and the network monitor. Only what weft
	// uses: a stock kernel may lack e.g. xfrm_user.
	nl, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("opening netlink: %w", err)
	}
	d.closers = append(d.closers, nl.Close)
	sel := &netmon.Selection{Ifaces: cfg.Ifaces, IfaceRegex: cfg.IfaceRegex, CanReach: cfg.IfaceCanReach, PublicIP: cfg.PublicIP, PublicIPv6: cfg.PublicIPv6}
	ext, why, err := netmon.Choose(nl, sel, !network.IPv4.Enabled())
	if err != nil {
		return &InvalidError{Err: err}
	}
	d.log.WithFields(logrus.Fields{"interface": ext.Name, "local_ip": ext.LocalIP, "public_ip": ext.PublicIP, "mtu": ext.MTU}).
		Infof("using interface %s because %s", ext.Name, why)
	for _, pool := range network.Pools() {
		if !ext.Public(pool.IPv6()).IsValid() {
			flag := map[bool]string{false: "--public-ip", true: "--public-ipv6"}[pool.IPv6()]
			return invalid("interface %s has no %s address and no %s is given", ext.Name, subnet.Family{IPv6: pool.IPv6()}.Name(), flag)
		}
	}
	checkForwarding(d.log, network)
	bgpCfg, bgpOpts, bgpOn, err := d.bgpSettings(network, ext)
	if err != nil {
		return err
	}

	rec := reconcile.New(reconcile.Config{
		Netlink: nl, Kernel: kernel.New(nl, netns.None()), Network: network, Interface: ext,
		Infrastructure: cfg.infrastructure(), ResyncInterval: cfg.ResyncInterval, Log: d.log, Metrics: d.metrics,
	})
	d.rec.Store(rec)
	first, err := rec.Start(ctx)
	if errors.Is(err, reconcile.ErrUnknownBackend) {
		return &InvalidError{Err: err}
	}
	if err != nil {
		return err
	}

	d.board.set(func(b *board) {
		b.notReady = map[bool]string{false: "acquiring a subnet lease", true: "waiting for this node's podCIDR"}[cfg.Kube.Enabled]
	})
	claim, err := source.acquire(ctx, network, d.attrs(first))
	if err != nil {
		return err
	}
	d.claim.Store(&claim)
	d.board.set(func(b *board) { b.notReady = "programming peers" })

	monNL, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("opening netlink: %w", err)
	}
	d.closers = append(d.closers, monNL.Close)
	mon := netmon.NewMonitor(monNL, ext, sel, d.log)

	leases := make(chan []subnet.Event, 64)
	announcements := mailbox.New[reconcile.Announcement]()
	out := outputs{configs: make(chan *subnet.Config, 1)}
	in := reconcile.Inputs{Leases: leases, Configs: out.configs, Interfaces: mon.Interfaces(), Drift: mon.Drift()}
	if bgpOn {
		sp := bgp.New(bgpCfg, bgpOpts)
		d.speaker.Store(sp)
		out.bgpNode, out.bgpOptions, out.bgpVIPs = mailbox.New[bgp.Node](), mailbox.New[bgp.Options](), mailbox.New[[]bgp.VIP]()
		g.Go(func() error {
			return sp.Run(ctx, bgp.Inputs{Node: out.bgpNode.C(), Options: out.bgpOptions.C(), VIPs: out.bgpVIPs.C()})
		})
	}
	if cli != nil {
		if err := d.startServices(ctx, g, cli, network, claim, &out); err != nil {
			return err
		}
	} else {
		d.log.Info("Kubernetes mode: weft's service VIPs are off (kube-proxy serves Kubernetes services)")
	}
	g.Go(func() error { return d.watchConfig(ctx, store, network, out) })
	g.Go(func() error { claim.Keep(ctx); return ctx.Err() })
	g.Go(func() error { return source.watch(ctx, network, leases) })
	g.Go(func() error { return mon.Run(ctx) })
	g.Go(func() error { return rec.Run(ctx, claim.Lease(), in, announcements) })
	g.Go(func() error { return d.announce(ctx, claim, network, announcements.C(), out.bgpNode) })
	return nil
}

func leaseSubnets(l subnet.Lease) []netip.Prefix { return slices.Collect(l.Subnets) }

// startServices starts the service watch and the service proxy (services
// live in etcd, next to the leases).
func (d *daemon) startServices(ctx context.Context, g *errgroup.Group, cli *clientv3.Client, network *subnet.Config, claim leaseClaim, out *outputs) error {
	cfg := d.cfg
	svcStore := svcetcd.New(cli, cfg.Prefix, d.log.WithField("component", "services"))
	d.svcs.Store(svcStore)
	ct, err := netlinksafe.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("opening netlink (netfilter): %w", err)
	}
	d.closers = append(d.closers, ct.Close)
	pcfg := proxy.Config{
		Kernel: proxy.NewTable(proxy.BufferedConn(-1)), Network: network, Subnets: leaseSubnets(claim.Lease()),
		ResyncInterval: cfg.ResyncInterval, Conntrack: &ct, Log: d.log, Metrics: d.metrics,
	}
	if out.bgpVIPs != nil {
		pcfg.Advertise = out.bgpVIPs.Send
	}
	px := proxy.New(pcfg)
	d.proxy.Store(px)
	services := make(chan []etcdwatch.Event[service.Definition], 16)
	out.proxyConfigs = mailbox.New[*subnet.Config]()
	g.Go(func() error {
		return svcStore.Watch(ctx, func(ctx context.Context, batch []etcdwatch.Event[service.Definition]) error {
			select {
			case services <- batch:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	})
	g.Go(func() error { return px.Run(ctx, proxy.Inputs{Services: services, Configs: out.proxyConfigs.C()}) })
	return nil
}

// outputs are where the daemon's goroutines send what the others follow.
type outputs struct {
	configs chan *subnet.Config // to the reconciler
	// To the BGP speaker, nil when BGP is off: this node's lease, and the
	// settings of the cluster's configuration.
	bgpNode    *mailbox.Mailbox[bgp.Node]
	bgpOptions *mailbox.Mailbox[bgp.Options]
	// From the service proxy to the BGP speaker: the service routes.
	bgpVIPs *mailbox.Mailbox[[]bgp.VIP]
	// To the service proxy: every valid configuration.
	proxyConfigs *mailbox.Mailbox[*subnet.Config]
}

// checkForwarding turns on IP forwarding for the families the network
// uses; without it no pod traffic crosses the node.
func checkForwarding(log *logrus.Entry, cfg *subnet.Config) {
	for _, pool := range cfg.Pools() {
		path := "/proc/sys/net/ipv4/ip_forward"
		if pool.IPv6() {
			path = "/proc/sys/net/ipv6/conf/all/forwarding"
		}
		cur, err := os.ReadFile(path)
		if err == nil && strings.TrimSpace(string(cur)) == "1" {
			continue
		}
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			log.WithError(err).Warnf("IP forwarding is off and cannot be turned on (%s); pods on other nodes will be unreachable", path)
			continue
		}
		log.Infof("turned on IP forwarding (%s)", path)
	}
}
