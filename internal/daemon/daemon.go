package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/google/nftables"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/status"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcd"
)

// Run is weftd. It starts every goroutine it needs and returns when ctx
// ends (nil) or something fails for good. Order of startup: health server,
// configuration, external interface, backend Setup, subnet lease, first
// programming of all peers, nftables rules, subnet.env, ready. On return
// the kernel state is left as it is, so pods keep working while weftd
// restarts. Errors that come from bad flags or configuration are
// *InvalidError or *subnet.ConfigError.
func Run(ctx context.Context, cfg *Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := logrus.NewEntry(cfg.Log)
	st := &state{}
	st.update(func(s *status.Status) { s.Node, s.NotReady = cfg.NodeName, "starting" })

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	var healthListener net.Listener
	if cfg.HealthzAddr != "" {
		l, err := net.Listen("tcp", cfg.HealthzAddr)
		if err != nil {
			return invalid("--healthz-addr %s: %v", cfg.HealthzAddr, err)
		}
		healthListener = l
	}

	// Serve health at once: /healthz says the process lives, /readyz why
	// it is not ready yet (waiting for etcd, say).
	var storeRef atomic.Pointer[etcd.Store]
	m := newMetrics("", func() uint64 {
		if s := storeRef.Load(); s != nil {
			return s.WatchRestarts()
		}
		return 0
	})
	if healthListener != nil {
		g.Go(func() error { return serveHealth(ctx, healthListener, st, m) })
	}
	fail := func(err error) error {
		cancel()
		g.Wait()
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}

	st.update(func(s *status.Status) { s.NotReady = "connecting to etcd" })
	cli, err := connect(ctx, cfg, log.WithField("component", "store"))
	if err != nil {
		return fail(err)
	}
	defer cli.Close()
	store := etcd.New(cli, etcd.Options{Prefix: cfg.Prefix, TTL: cfg.LeaseTTL, Log: log.WithField("component", "store")})
	storeRef.Store(store)

	d := &daemon{cfg: cfg, log: log, store: store, state: st, metrics: m}
	st.update(func(s *status.Status) { s.NotReady = "reading the network configuration" })
	d.netCfg, err = d.readNetConfig(ctx)
	if err != nil {
		return fail(err)
	}
	m.setBackend(d.netCfg.Backend.Type)
	g.Go(func() error { return d.run(ctx) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// daemon is the state of one Run.
type daemon struct {
	cfg     *Config
	log     *logrus.Entry
	store   *etcd.Store
	state   *state
	metrics *metrics

	netCfg   *subnet.Config // owned by the sync loop once it runs
	nl       netlinksafe.Handle
	ext      *backend.ExternalInterface
	backends *backendSet
	claim    *etcd.Claim
	// pending holds lease attributes a backend switch still has to publish
	// (etcd was unreachable); owned by the sync loop.
	pending *subnet.Attrs
}

// connect creates the etcd client, retrying while etcd is unreachable (a
// client with credentials authenticates when it is created) and saying so
// every few seconds with the cause.
func connect(ctx context.Context, cfg *Config, log *logrus.Entry) (*clientv3.Client, error) {
	waiting := etcdWaiter{log: log, cfg: cfg.Etcd}
	for {
		cli, err := etcd.NewClient(cfg.Etcd)
		if err == nil {
			return cli, nil
		}
		if errors.Is(err, etcd.ErrClientConfig) {
			return nil, &InvalidError{Err: err}
		}
		waiting.say(ctx, err, "cannot connect to etcd; retrying")
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// etcdWaiter says, at most every few seconds, that weftd is waiting for
// etcd: the endpoints, the error, and the cause etcd.Probe finds (the etcd
// client itself often only reports a deadline).
type etcdWaiter struct {
	log  *logrus.Entry
	cfg  etcd.ClientConfig
	last time.Time
}

func (w *etcdWaiter) say(ctx context.Context, err error, msg string) {
	if time.Since(w.last) < 5*time.Second {
		return
	}
	w.last = time.Now()
	entry := w.log.WithField("endpoints", w.cfg.Endpoints).WithError(err)
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if why := etcd.Probe(pctx, w.cfg); why != nil {
		entry = entry.WithField("cause", why.Error())
	}
	entry.Warn(msg)
}

// readNetConfig reads net-conf.json from --net-config-path or etcd. While
// etcd is unreachable or holds no configuration it waits, saying so every
// few seconds.
func (d *daemon) readNetConfig(ctx context.Context) (*subnet.Config, error) {
	log := d.log.WithField("component", "config")
	var cfg *subnet.Config
	var warnings []string
	if d.cfg.NetConfigPath != "" {
		data, err := os.ReadFile(d.cfg.NetConfigPath)
		if err != nil {
			return nil, invalid("--net-config-path: %v", err)
		}
		if cfg, warnings, err = subnet.ParseConfig(data); err != nil {
			return nil, fmt.Errorf("%s: %w", d.cfg.NetConfigPath, err)
		}
	} else {
		waiting := etcdWaiter{log: log, cfg: d.cfg.Etcd}
		for {
			var err error
			gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			cfg, warnings, err = d.store.GetConfig(gctx)
			cancel()
			var bad *subnet.ConfigError
			if errors.As(err, &bad) {
				return nil, fmt.Errorf("%s in etcd: %w", d.store.ConfigKey(), err)
			}
			if err == nil {
				break
			}
			waiting.say(ctx, err, "waiting for the network configuration in etcd")
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	fields := logrus.Fields{"backend": cfg.Backend.Type}
	for _, p := range cfg.Pools() {
		fields["network_ipv"+strconv.Itoa(map[bool]int{true: 4, false: 6}[p.Network.Addr().Is4()])] = p.Network.String()
	}
	log.WithFields(fields).Info("network configuration")
	return cfg, nil
}

func (d *daemon) run(ctx context.Context) error {
	var err error
	d.nl, err = netlinksafe.NewHandle(unix.NETLINK_ROUTE) // only what weft uses: a stock kernel may lack e.g. xfrm_user
	if err != nil {
		return fmt.Errorf("opening netlink: %w", err)
	}
	defer d.nl.Close()

	ipv6Only := !d.netCfg.IPv4.Enabled()
	ext, why, err := chooseInterface(d.nl, d.cfg, ipv6Only)
	if err != nil {
		return &InvalidError{Err: err}
	}
	d.ext = ext
	d.log.WithFields(logrus.Fields{"interface": ext.Name, "local_ip": ext.LocalIP, "public_ip": ext.PublicIP, "mtu": ext.MTU}).
		Infof("using interface %s because %s", ext.Name, why)
	if d.netCfg.IPv4.Enabled() && !ext.PublicIP.IsValid() {
		return invalid("interface %s has no IPv4 address and no --public-ip is given", ext.Name)
	}
	if d.netCfg.IPv6.Enabled() && !ext.PublicIPv6.IsValid() {
		return invalid("interface %s has no IPv6 address and no --public-ipv6 is given", ext.Name)
	}
	checkForwarding(d.log, d.netCfg)

	d.backends = newBackendSet(backend.Env{Netlink: d.nl, Ext: ext, Network: d.netCfg, Log: d.log}, d.log.WithField("component", "backends"))
	primary, err := d.backends.setPrimary(ctx, d.netCfg.Backend)
	if err != nil {
		if _, ok := constructors[d.netCfg.Backend.Type]; !ok {
			return &InvalidError{Err: err}
		}
		return err
	}
	published := primary.published

	req := etcd.AcquireRequest{
		Config: d.netCfg,
		Attrs: subnet.Attrs{
			PublicIP: ext.PublicIP, BackendType: primary.Type(),
			BackendData: published.Data, BackendV6Data: published.V6Data, Node: d.cfg.NodeName,
		},
	}
	if d.netCfg.IPv6.Enabled() {
		req.Attrs.PublicIPv6 = ext.PublicIPv6
	}
	if !d.netCfg.IPv4.Enabled() {
		req.Attrs.PublicIP = netip.Addr{}
	}
	if prev, err := subnet.ReadEnvFile(d.cfg.SubnetFile); err == nil {
		req.Previous, req.PreviousIPv6 = prev.Subnet.Masked(), prev.IPv6Subnet.Masked()
	}
	d.state.update(func(s *status.Status) { s.NotReady = "acquiring a subnet lease" })
	if d.claim, err = d.store.Acquire(ctx, req); err != nil {
		return err
	}
	self := d.claim.Lease()
	d.state.update(func(s *status.Status) {
		s.Backend, s.Interface, s.MTU = primary.Type(), ext.Name, primary.MTU()
		s.PublicIP, s.PublicIPv6 = addrString(req.Attrs.PublicIP), addrString(req.Attrs.PublicIPv6)
		s.Subnet, s.IPv6Subnet = prefixString(self.Subnet), prefixString(self.IPv6Subnet)
		s.NotReady = "programming peers"
	})

	g, ctx := errgroup.WithContext(ctx)
	events := make(chan []subnet.Event, 64)
	kick := make(chan struct{}, 1)
	configs := make(chan *subnet.Config, 1)
	g.Go(func() error { return d.watchConfig(ctx, configs) })
	g.Go(func() error { d.claim.Keep(ctx); return ctx.Err() })
	g.Go(func() error { return d.store.WatchFrom(ctx, d.netCfg, events, d.claim.TakeListing()) })
	g.Go(func() error { return d.watchKernel(ctx, kick) })
	g.Go(func() error { return d.reportLease(ctx) })
	g.Go(func() error {
		return d.syncLoop(ctx, self, events, kick, configs, func() error {
			if err := d.finishStartup(); err != nil {
				return err
			}
			d.backends.sweep()
			return nil
		})
	})
	return g.Wait()
}

// kernelCheckDelay is how long after a kernel event the kernel is read
// again to repair drift.
const kernelCheckDelay = 500 * time.Millisecond

// syncLoop owns the set of peers: it applies lease events, coalescing
// bursts into one sync, and syncs again on kernel events and every
// ResyncInterval to repair drift. It applies configuration changes (a
// backend switch) between syncs. After the first successful sync that
// follows the initial listing it calls ready once (nftables rules,
// subnet.env, readiness).
func (d *daemon) syncLoop(ctx context.Context, self subnet.Lease, events <-chan []subnet.Event, kick <-chan struct{}, configs <-chan *subnet.Config, ready func() error) error {
	log := d.log.WithField("component", "sync")
	var underlay []netip.Prefix
	if d.ext != nil {
		underlay = d.ext.Addrs
	}
	peers := newPeerSet(log, self, underlay)
	// Wait for the first listing: syncing before it would delete routes a
	// restarted daemon should keep.
	select {
	case batch := <-events:
		peers.apply(batch)
	case <-ctx.Done():
		return ctx.Err()
	}
	isReady := false
	// full makes the next sync read the kernel and program every peer
	// rather than apply the changes since the last one to what weft last
	// programmed: at first, periodically, on kernel events (drift), after
	// a configuration change and after a failed sync.
	full := true
	var verifySoon <-chan time.Time
	ticker := time.NewTicker(d.cfg.ResyncInterval)
	defer ticker.Stop()
	for {
	drain: // coalesce whatever else has arrived
		for {
			select {
			case batch := <-events:
				peers.apply(batch)
			default:
				break drain
			}
		}
		if d.pending != nil {
			d.publish(ctx)
		}
		if d.ext != nil && full {
			// Link and address events schedule a full sync.
			d.refreshInterface(ctx)
			peers.setUnderlay(d.ext.Addrs)
		}
		if full && isReady && peers.hasChanges() {
			// Lease changes first: a full sync reads the kernel, tens of
			// milliseconds with thousands of peers.
			if err := d.sync(ctx, self, peers, false); err != nil {
				log.WithError(err).Debug("update before a full sync incomplete")
			}
		}
		err := d.sync(ctx, self, peers, full)
		full = err != nil
		if !isReady && err == nil {
			if err := ready(); err != nil {
				return err
			}
			isReady = true
		}
		if err != nil {
			log.WithError(err).Warn("sync incomplete; retrying")
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case batch := <-events:
				peers.apply(batch)
				break wait
			case <-kick:
				// A kernel event (drift, the underlay changing, or weft's
				// own deletions): verify soon, without delaying lease work
				// that arrives meanwhile. Events share one check.
				if verifySoon == nil {
					verifySoon = time.After(kernelCheckDelay)
				}
			case <-verifySoon:
				verifySoon = nil
				full = true
				break wait
			case cfg := <-configs:
				d.applyConfig(ctx, cfg)
				full = true
				break wait
			case <-ticker.C:
				full = true
				break wait
			}
		}
	}
}

// sync programs the peers' changes since the last sync or, if full or
// when the changes need it, every peer, reading the kernel.
func (d *daemon) sync(ctx context.Context, self subnet.Lease, peers *peerSet, full bool) error {
	start := time.Now()
	changes := peers.takeChanges()
	var err error
	if !full {
		err = d.backends.update(ctx, self, changes, peers)
	}
	if full || errors.Is(err, errFullSync) {
		err = d.backends.syncAll(ctx, self, peers)
	}
	elapsed := time.Since(start)
	known, stats := peers.stats()
	d.metrics.observeSync(elapsed, stats, err)
	d.state.update(func(s *status.Status) {
		s.Peers = status.Peers{Known: known, Programmed: stats.Programmed, OtherType: stats.OtherType, Unreachable: stats.Unreachable, Direct: stats.Direct}
		s.LastSync = time.Now()
		s.LastSyncErr = ""
		if err != nil {
			s.LastSyncErr = err.Error()
			s.SyncErrors++
		}
	})
	return err
}

// finishStartup installs the nftables rules and writes subnet.env, after
// which the node is ready.
func (d *daemon) finishStartup() error {
	self := d.claim.Lease()
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	var networks []netip.Prefix
	for _, p := range d.netCfg.Pools() {
		networks = append(networks, p.Network)
	}
	if err := masq.Apply(conn, masq.Rules{Networks: networks, Masquerade: d.cfg.IPMasq}); err != nil {
		return err
	}
	if err := d.writeSubnetEnv(); err != nil {
		return err
	}
	d.state.update(func(s *status.Status) { s.Ready, s.NotReady = true, "" })
	d.metrics.ready.Set(1)
	// Startup's garbage (the listing, the first sync) is the most weftd
	// ever holds; give it back rather than keep it resident, and from now
	// on collect sooner: steady state allocates little. GOGC, when set,
	// wins (as with Calico's Felix).
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(d.cfg.GCPercent)
	}
	debug.FreeOSMemory()
	if err := notifySystemd("READY=1"); err != nil {
		d.log.WithError(err).Warn("cannot notify systemd")
	}
	d.log.WithFields(logrus.Fields{"subnet": self.Key(), "subnet_file": d.cfg.SubnetFile}).Info("ready")
	return nil
}

// writeSubnetEnv writes subnet.env for the node's lease and primary
// backend.
func (d *daemon) writeSubnetEnv() error {
	self := d.claim.Lease()
	return subnet.WriteEnvFile(d.cfg.SubnetFile, &subnet.Env{
		Network: d.netCfg.IPv4.Network, Subnet: subnet.GatewayPrefix(self.Subnet),
		IPv6Network: d.netCfg.IPv6.Network, IPv6Subnet: subnet.GatewayPrefix(self.IPv6Subnet),
		MTU: d.backends.primaryBackend().MTU(), IPMasq: d.cfg.IPMasq,
	})
}

// reportLease keeps the lease TTL metric and the lease problem current. It
// asks etcd nothing: the claim knows its expiry from the keep-alives.
func (d *daemon) reportLease(ctx context.Context) error {
	for {
		ttl := d.claim.TTL()
		d.metrics.leaseTTL.Set(ttl.Seconds())
		problem := d.claim.Problem()
		d.state.update(func(s *status.Status) {
			s.Restarts = d.store.WatchRestarts()
			s.LeaseTTL = int64(ttl / time.Second)
			s.LeaseIssue = ""
			if problem != nil {
				s.LeaseIssue = problem.Error()
			}
		})
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
		}
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}
