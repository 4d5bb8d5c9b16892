package daemon

import (
	"context"
	"errors"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// etcdMetrics count weftd's requests to etcd by gRPC method (Range, Txn,
// Put, LeaseGrant; Watch and LeaseKeepAlive when their stream is opened),
// through interceptors on the etcd client.
type etcdMetrics struct {
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
}

func newEtcdMetrics() *etcdMetrics {
	return &etcdMetrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "weft_etcd_request_duration_seconds", Help: "Time etcd took to answer weftd's requests, by gRPC method (streams: until opened).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"method"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_etcd_request_errors_total", Help: "weftd's requests to etcd that failed, by gRPC method (not those weftd itself cancelled).",
		}, []string{"method"}),
	}
}

// dialOptions are the interceptors that feed m.
func (m *etcdMetrics) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			start := time.Now()
			err := invoker(ctx, method, req, reply, cc, opts...)
			m.observe(method, time.Since(start), err)
			return err
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			start := time.Now()
			s, err := streamer(ctx, desc, cc, method, opts...)
			m.observe(method, time.Since(start), err)
			return s, err
		}),
	}
}

func (m *etcdMetrics) observe(method string, d time.Duration, err error) {
	name := path.Base(method) // "/etcdserverpb.KV/Range" -> "Range"
	m.duration.WithLabelValues(name).Observe(d.Seconds())
	if err != nil && !errors.Is(err, context.Canceled) && status.Code(err) != codes.Canceled {
		m.errors.WithLabelValues(name).Inc()
	}
}

// etcdConnCollector reports at scrape time whether the etcd client's
// connection is up: weftd's steady state sends no requests (watches and
// keep-alives are streams), so a down etcd shows here first. Nothing in
// Kubernetes mode.
type etcdConnCollector struct{ d *daemon }

var etcdConnectedDesc = prometheus.NewDesc("weft_etcd_connected",
	"1 when weftd's connection to etcd is up (ready or idle), 0 while it is connecting or failing.", nil, nil)

func (etcdConnCollector) Describe(ch chan<- *prometheus.Desc) { ch <- etcdConnectedDesc }

func (c etcdConnCollector) Collect(ch chan<- prometheus.Metric) {
	cli := c.d.etcd.Load()
	if cli == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(etcdConnectedDesc, prometheus.GaugeValue, connected(cli))
}

func connected(cli *clientv3.Client) float64 {
	switch cli.ActiveConnection().GetState() {
	case connectivity.Ready, connectivity.Idle:
		return 1
	}
	return 0
}
