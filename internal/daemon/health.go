package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/reconcile"
	"github.com/weft-net/weft/internal/status"
	"github.com/weft-net/weft/internal/version"
)

// metrics are weftd's Prometheus metrics, in a registry of their own. It
// implements reconcile.Metrics and proxy.Metrics.
type metrics struct {
	registry       *prometheus.Registry
	peers          *prometheus.GaugeVec
	syncDuration   prometheus.Histogram
	syncErrors     prometheus.Counter
	backendInfo    *prometheus.GaugeVec
	configRejected prometheus.Counter
	svcDuration    prometheus.Histogram
	svcErrors      prometheus.Counter
	etcd           *etcdMetrics
}

func newMetrics(d *daemon) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weft_peers", Help: "Other nodes' leases this node admits, by state; the states sum to the peers: encapsulated (reached through the tunnel), direct (plain routes, host-gw or DirectRouting), other_backend (no backend here for the type they announce), unreachable (their backend cannot serve them).",
		}, []string{"state"}),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "weft_sync_duration_seconds", Help: "Time to bring the kernel in step with the leases.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		syncErrors:     prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_sync_errors_total", Help: "Syncs that failed to program something."}),
		backendInfo:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "weft_backend_info", Help: "The backend this node runs (announces in its lease)."}, []string{"type"}),
		configRejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_config_rejected_total", Help: "Configuration changes that were invalid or cannot be applied to a running node."}),
		svcDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "weft_service_sync_duration_seconds", Help: "Time to bring the service table (nftables weft-svc) in step with the service definitions.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		svcErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_service_sync_errors_total", Help: "Service table updates that failed (retried)."}),
		etcd:      newEtcdMetrics(),
	}
	v := version.Get()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "weft_build_info", Help: "Always 1; the labels say which weftd runs."}, []string{"version", "commit", "goversion"})
	buildInfo.WithLabelValues(v.Version, v.Commit, v.GoVersion).Set(1)
	leaseProblem := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "weft_lease_problem", Help: "1 while this node's lease has a problem (another node holds its subnet: a subnet conflict), else 0."},
		func() float64 {
			if c := d.claim.Load(); c != nil && (*c).Problem() != nil {
				return 1
			}
			return 0
		})
	restarts := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "weft_etcd_watch_restarts_total", Help: "Times a watch on etcd (leases, services) had to be re-established."},
		func() float64 { return float64(d.watchRestarts()) })
	leaseTTL := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "weft_lease_ttl_seconds", Help: "Time left on this node's etcd lease (-1 in Kubernetes mode: a Node has no TTL)."},
		func() float64 {
			if c := d.claim.Load(); c != nil {
				return (*c).TTL().Seconds()
			}
			return 0
		})
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "weft_ready", Help: "1 when the node is ready (subnet.env written, peers programmed, syncs not failing for long), as /readyz says."},
		func() float64 {
			if ok, _ := d.readiness(); ok {
				return 1
			}
			return 0
		})
	m.registry.MustRegister(m.peers, m.syncDuration, m.syncErrors, leaseTTL, leaseProblem, ready, m.backendInfo, buildInfo, m.configRejected, restarts,
		m.etcd.duration, m.etcd.errors, etcdConnCollector{d},
		m.svcDuration, m.svcErrors, bgpCollector{d}, serviceCollector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// bgpCollector reports the BGP speaker's sessions at scrape time.
type bgpCollector struct{ d *daemon }

var (
	bgpUpDesc = prometheus.NewDesc("weft_bgp_session_up",
		"1 when the BGP session with the peer is established.", []string{"peer"}, nil)
	bgpSentDesc = prometheus.NewDesc("weft_bgp_prefixes_advertised",
		"Prefixes this node advertises to the peer.", []string{"peer"}, nil)
	bgpReceivedDesc = prometheus.NewDesc("weft_bgp_prefixes_received",
		"Prefixes the peer sent (never installed or passed on).", []string{"peer"}, nil)
	bgpRoutesDesc = prometheus.NewDesc("weft_bgp_routes",
		"Routes this node originates over BGP.", nil, nil)
)

func (bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bgpUpDesc
	ch <- bgpSentDesc
	ch <- bgpReceivedDesc
	ch <- bgpRoutesDesc
}

func (c bgpCollector) Collect(ch chan<- prometheus.Metric) {
	sp := c.d.speaker.Load()
	if sp == nil {
		return
	}
	st := sp.Status()
	for _, p := range st.Peers {
		up := 0.0
		if p.State == "established" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(bgpUpDesc, prometheus.GaugeValue, up, p.Address)
		ch <- prometheus.MustNewConstMetric(bgpSentDesc, prometheus.GaugeValue, float64(p.PrefixesSent), p.Address)
		ch <- prometheus.MustNewConstMetric(bgpReceivedDesc, prometheus.GaugeValue, float64(p.PrefixesReceived), p.Address)
	}
	ch <- prometheus.MustNewConstMetric(bgpRoutesDesc, prometheus.GaugeValue, float64(len(st.Advertised)))
}

// serviceCollector reports the service proxy's state at scrape time.
type serviceCollector struct{ d *daemon }

var (
	svcCountDesc = prometheus.NewDesc("weft_services",
		"Service definitions by state: programmed (in this node's table), refused (invalid, or claiming another service's VIP and port or node port).", []string{"state"}, nil)
	svcEndpointsDesc = prometheus.NewDesc("weft_service_endpoints",
		"Ready endpoints of the programmed services.", nil, nil)
	svcChangeDesc = prometheus.NewDesc("weft_service_last_change_timestamp_seconds",
		"When the last change of services reached the kernel (Unix time).", nil, nil)
)

func (serviceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- svcCountDesc
	ch <- svcEndpointsDesc
	ch <- svcChangeDesc
}

func (c serviceCollector) Collect(ch chan<- prometheus.Metric) {
	px := c.d.proxy.Load()
	if px == nil {
		return
	}
	st := px.Status()
	ch <- prometheus.MustNewConstMetric(svcCountDesc, prometheus.GaugeValue, float64(st.Programmed), "programmed")
	ch <- prometheus.MustNewConstMetric(svcCountDesc, prometheus.GaugeValue, float64(len(st.Refused)), "refused")
	ch <- prometheus.MustNewConstMetric(svcEndpointsDesc, prometheus.GaugeValue, float64(st.Endpoints))
	if !st.LastChange.IsZero() {
		ch <- prometheus.MustNewConstMetric(svcChangeDesc, prometheus.GaugeValue, float64(st.LastChange.UnixNano())/1e9)
	}
}

// ObserveServiceSync implements proxy.Metrics.
func (m *metrics) ObserveServiceSync(d time.Duration, err error) {
	m.svcDuration.Observe(d.Seconds())
	if err != nil {
		m.svcErrors.Inc()
	}
}

// SetBackend implements reconcile.Metrics.
func (m *metrics) SetBackend(t string) {
	m.backendInfo.Reset()
	if t != "" {
		m.backendInfo.WithLabelValues(t).Set(1)
	}
}

// ConfigRejected implements reconcile.Metrics.
func (m *metrics) ConfigRejected() { m.configRejected.Inc() }

// ObserveSync implements reconcile.Metrics.
func (m *metrics) ObserveSync(d time.Duration, stats backend.Stats, err error) {
	m.syncDuration.Observe(d.Seconds())
	if err != nil {
		m.syncErrors.Inc()
	}
	m.peers.WithLabelValues("other_backend").Set(float64(stats.OtherType))
	m.peers.WithLabelValues("unreachable").Set(float64(stats.Unreachable))
	m.peers.WithLabelValues("direct").Set(float64(stats.Direct))
	m.peers.WithLabelValues("encapsulated").Set(float64(stats.Programmed - stats.Direct))
}

// wedged says why weftd is stuck, or "": its sync loop has not come
// round for wedgedLimit (a kernel call or a lock that never returns).
// Waiting for etcd or the API server is not being stuck: the loop starts
// once the lease is held.
func (d *daemon) wedged(now time.Time) string {
	r := d.rec.Load()
	if r == nil {
		return ""
	}
	return stuck(r.LastTurn(), now, d.cfg.ResyncInterval)
}

// stuck says why a sync loop that last came round at last, and should
// every resync, is stuck at now, or "".
func stuck(last, now time.Time, resync time.Duration) string {
	if last.IsZero() || now.Sub(last) <= wedgedLimit(resync) {
		return ""
	}
	return fmt.Sprintf("the sync loop has not come round for %s (it should every %s)", now.Sub(last).Truncate(time.Second), resync)
}

// wedgedLimit is how long the sync loop may take to come round before
// /healthz fails: a full sync of 10,000 peers takes under a second.
func wedgedLimit(resync time.Duration) time.Duration { return 3*resync + time.Minute }

// failingLimit is how long syncs may keep failing before the node says
// it is not ready: three resyncs, each of which retried.
func failingLimit(resync time.Duration) time.Duration { return 3 * resync }

// failing says why the node is not ready when every sync has failed for
// limit or longer (a peer the kernel keeps refusing), or "".
func failing(rs reconcile.Status, now time.Time, limit time.Duration) string {
	if rs.FailingSince.IsZero() || now.Sub(rs.FailingSince) < limit {
		return ""
	}
	return fmt.Sprintf("every sync has failed for %s: %s", now.Sub(rs.FailingSince).Truncate(time.Second), rs.LastSyncErr)
}

// watchRestarts counts the times a watch on etcd (leases, services) had to
// be re-established.
func (d *daemon) watchRestarts() uint64 {
	n := uint64(0)
	if s := d.source.Load(); s != nil {
		n += (*s).watchRestarts()
	}
	if s := d.svcs.Load(); s != nil {
		n += s.WatchRestarts()
	}
	return n
}

// readiness says whether the node is ready, and why not: the board's
// word, unless every sync has failed for long (see failing). /readyz,
// /status and weft_ready all ask it.
func (d *daemon) readiness() (ready bool, why string) {
	d.board.set(func(b *board) { ready, why = b.ready, b.notReady })
	if r := d.rec.Load(); r != nil && ready {
		if f := failing(r.Status(), time.Now(), failingLimit(d.cfg.ResyncInterval)); f != "" {
			return false, f
		}
	}
	return ready, why
}

// status is what /status serves: the daemon's own state, the
// reconciler's and the lease's, read now.
func (d *daemon) status() status.Status {
	s := status.Status{Node: d.cfg.NodeName}
	s.Ready, s.NotReady = d.readiness()
	d.board.set(func(b *board) { s.ConfigIssue = b.configIssue })
	if r := d.rec.Load(); r != nil {
		rs := r.Status()
		s.Backend, s.Interface, s.MTU, s.Peers = rs.Backend, rs.Interface, rs.MTU, rs.Peers
		s.LastSync, s.LastSyncErr, s.SyncErrors = rs.LastSync, rs.LastSyncErr, rs.SyncErrors
		if rs.ConfigIssue != "" {
			s.ConfigIssue = rs.ConfigIssue
		}
	}
	if cp := d.claim.Load(); cp != nil {
		c := *cp
		l := c.Lease()
		s.Subnet, s.IPv6Subnet = str(l.Subnet), str(l.IPv6Subnet)
		s.PublicIP, s.PublicIPv6 = str(l.PublicIP), str(l.PublicIPv6)
		s.LeaseTTL = int64(c.TTL() / time.Second)
		if p := c.Problem(); p != nil {
			s.LeaseIssue = p.Error()
		}
	}
	s.Restarts = d.watchRestarts()
	if sp := d.speaker.Load(); sp != nil {
		s.BGP = sp.Status()
	}
	if px := d.proxy.Load(); px != nil {
		s.Services = px.Status()
	}
	return s
}

// serveHealth serves /healthz, /readyz and /metrics, and with withStatus
// /status, on l in g until ctx ends, then shuts the server down, which
// closes l. Nothing it serves changes state.
func serveHealth(ctx context.Context, g *errgroup.Group, l net.Listener, d *daemon, withStatus bool) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if why := d.wedged(time.Now()); why != "" {
			http.Error(w, "wedged: "+why, http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := d.readiness(); !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	if withStatus {
		mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			enc.Encode(d.status())
		})
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.registry, promhttp.HandlerOpts{}))

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx) // a client still connected after 2 s is cut off
		return nil
	})
}

// str is v's text form, or "" when v is not valid (no address).
func str[T interface {
	IsValid() bool
	String() string
}](v T) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}
