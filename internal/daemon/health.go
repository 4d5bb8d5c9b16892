package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/status"
)

// metrics are weftd's Prometheus metrics, in a registry of their own.
type metrics struct {
	registry       *prometheus.Registry
	peers          *prometheus.GaugeVec
	syncDuration   prometheus.Histogram
	syncErrors     prometheus.Counter
	leaseTTL       prometheus.Gauge
	ready          prometheus.Gauge
	backendInfo    *prometheus.GaugeVec
	configRejected prometheus.Counter
}

func newMetrics(backendType string, watchRestarts func() uint64) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weft_peers", Help: "Leases of other nodes by state: programmed (of which direct: plain routes by DirectRouting), other_backend (no backend here for the type they announce), unreachable (their backend cannot serve them).",
		}, []string{"state"}),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "weft_sync_duration_seconds", Help: "Time to bring the kernel in step with the leases.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_sync_errors_total", Help: "Syncs that failed to program something."}),
		leaseTTL:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_lease_ttl_seconds", Help: "Time left on this node's etcd lease."}),
		ready:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_ready", Help: "1 when the node is ready (subnet.env written, peers programmed)."}),
	}
	m.backendInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "weft_backend_info", Help: "The backend this node runs (announces in its lease)."}, []string{"type"})
	m.setBackend(backendType)
	m.configRejected = prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_config_rejected_total", Help: "Configuration changes that were invalid or cannot be applied to a running node."})
	restarts := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "weft_etcd_watch_restarts_total", Help: "Times the lease watch had to be re-established."},
		func() float64 { return float64(watchRestarts()) })
	m.registry.MustRegister(m.peers, m.syncDuration, m.syncErrors, m.leaseTTL, m.ready, m.backendInfo, m.configRejected, restarts,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) setBackend(t string) {
	m.backendInfo.Reset()
	if t != "" {
		m.backendInfo.WithLabelValues(t).Set(1)
	}
}

func (m *metrics) observeSync(d time.Duration, stats backend.Stats, err error) {
	m.syncDuration.Observe(d.Seconds())
	if err != nil {
		m.syncErrors.Inc()
	}
	m.peers.WithLabelValues("programmed").Set(float64(stats.Programmed))
	m.peers.WithLabelValues("other_backend").Set(float64(stats.OtherType))
	m.peers.WithLabelValues("unreachable").Set(float64(stats.Unreachable))
	m.peers.WithLabelValues("direct").Set(float64(stats.Direct))
	m.peers.WithLabelValues("encapsulated").Set(float64(stats.Programmed - stats.Direct))
}

// state is the daemon's status as the health server reports it. It is
// safe for concurrent use.
type state struct {
	mu sync.Mutex
	st status.Status // guarded by mu
}

func (s *state) update(f func(*status.Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.st)
}

func (s *state) get() status.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// serveHealth serves /healthz, /readyz, /metrics and /status on l until
// ctx ends, and closes l. Nothing it serves changes state.
func serveHealth(ctx context.Context, l net.Listener, st *state, m *metrics) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		s := st.get()
		if !s.Ready {
			http.Error(w, "not ready: "+s.NotReady, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(st.get())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
