// Package etcd is weft's subnet lease store in etcd, in flannel's layout:
// <prefix>/config holds net-conf.json and <prefix>/subnets/<key> one lease
// per node, each key attached to an etcd lease that its holder keeps alive.
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
)

// DefaultPrefix is where weft keeps its keys unless told otherwise.
// "/coreos.com/network" joins a flannel cluster.
const DefaultPrefix = "/weft/network"

// ClientConfig says how to reach etcd. It is shared by weftd and weftctl.
type ClientConfig struct {
	Endpoints []string
	CAFile    string
	CertFile  string
	KeyFile   string
	Username  string
	Password  string // never logged
	// DialOptions are added to the client's gRPC options (weftd's
	// metrics interceptors).
	DialOptions []grpc.DialOption
}

// ErrClientConfig is wrapped by NewClient for errors in the configuration
// itself (TLS files, missing endpoints), which retrying cannot fix.
var ErrClientConfig = errors.New("invalid etcd client configuration")

// NewClient returns an etcd client. Without credentials it does not wait
// for etcd: calls made while etcd is unreachable fail (or block until their
// context ends), and the client reconnects by itself. With a user name and
// password it authenticates first, and fails if etcd cannot be reached.
func NewClient(cfg ClientConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("no etcd endpoints given: %w", ErrClientConfig)
	}
	tlsConfig, err := cfg.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrClientConfig)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  tlsConfig,
		Username:             cfg.Username,
		Password:             cfg.Password,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// gRPC's reconnect backoff grows to 2 minutes while etcd is away;
		// cap it so a node catches up within seconds of etcd's return.
		DialOptions: append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})}, cfg.DialOptions...),
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("creating etcd client for %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}

// tlsConfig loads the TLS files, or returns nil when none are given.
func (cfg ClientConfig) tlsConfig() (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.KeyFile == "" {
		return nil, nil
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, fmt.Errorf("etcd client certificate needs both --etcd-certfile and --etcd-keyfile")
	}
	info := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
	c, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading etcd TLS files: %w", err)
	}
	return c, nil
}

// Probe connects to every endpoint as the client would and says why one
// cannot be used: the connection fails, or TLS does (a server certificate
// from an unknown CA or expired, a client certificate the server refuses,
// a plain-text endpoint for a TLS server). The etcd client itself only
// reports a deadline in these cases. Probe returns nil when every endpoint
// accepts the connection.
func Probe(ctx context.Context, cfg ClientConfig) error {
	tlsConf, err := cfg.tlsConfig()
	if err != nil {
		return err
	}
	var errs []error
	for _, ep := range cfg.Endpoints {
		if err := probe(ctx, ep, tlsConf); err != nil {
			errs = append(errs, fmt.Errorf("etcd %s: %w", ep, err))
		}
	}
	return errors.Join(errs...)
}

func probe(ctx context.Context, endpoint string, tlsConf *tls.Config) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if u.Scheme != "https" {
		return probePlain(conn)
	}
	c := tlsConf.Clone()
	if c == nil {
		c = &tls.Config{}
	}
	c.ServerName = u.Hostname()
	c.NextProtos = []string{"h2"}
	tc := tls.Client(conn, c)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	// With TLS 1.3 the server's verdict on the client certificate comes
	// after the handshake: read once, briefly.
	tc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := tc.Read(make([]byte, 1)); err != nil && !isTimeout(err) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("TLS: %w", err)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// probePlain checks that a plain-text endpoint speaks HTTP/2 (gRPC): it
// sends the client preface and expects the server's SETTINGS frame. A TLS
// server answers with an alert or an HTTP/1 error, or closes.
func probePlain(conn net.Conn) error {
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	hdr := make([]byte, 9)
	_, err := io.ReadFull(conn, hdr)
	switch {
	case err == nil && hdr[3] == 0x4: // a SETTINGS frame
		return nil
	case isTimeout(err):
		return errors.New("no HTTP/2 answer in plain text; does the endpoint want https://?")
	default:
		return errors.New("the server does not speak plain-text gRPC (it wants TLS?); use an https:// endpoint")
	}
}
