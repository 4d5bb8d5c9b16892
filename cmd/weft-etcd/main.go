// Command weft-etcd runs a real etcd server (etcd's own server code,
// embedded) for weft's tests, the sandbox and the demo. It takes a handful
// of etcd's flags, prints "ready" on stdout once it serves clients, and
// stops cleanly on SIGTERM or SIGINT. It is not meant for production: run
// etcd itself there.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "weft-etcd:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg := embed.NewConfig()
	var listenClient, advertiseClient, listenPeer, advertisePeer string
	fs := flag.NewFlagSet("weft-etcd", flag.ExitOnError)
	fs.StringVar(&cfg.Name, "name", "default", "member name")
	fs.StringVar(&cfg.Dir, "data-dir", "", "data directory (required)")
	fs.StringVar(&listenClient, "listen-client-urls", "http://127.0.0.1:2379", "comma-separated URLs to serve clients on")
	fs.StringVar(&advertiseClient, "advertise-client-urls", "", "comma-separated client URLs to advertise (default: the listen URLs)")
	fs.StringVar(&listenPeer, "listen-peer-urls", "http://127.0.0.1:2380", "comma-separated URLs to serve peers on")
	fs.StringVar(&advertisePeer, "initial-advertise-peer-urls", "", "comma-separated peer URLs to advertise (default: the listen URLs)")
	fs.StringVar(&cfg.InitialCluster, "initial-cluster", "", "initial cluster, name=peerURL,... (default: this member alone)")
	fs.StringVar(&cfg.ClusterState, "initial-cluster-state", "new", "new or existing")
	fs.StringVar(&cfg.InitialClusterToken, "initial-cluster-token", "weft-etcd", "initial cluster token")
	fs.StringVar(&cfg.ClientTLSInfo.CertFile, "cert-file", "", "server TLS certificate for clients")
	fs.StringVar(&cfg.ClientTLSInfo.KeyFile, "key-file", "", "server TLS key for clients")
	fs.StringVar(&cfg.ClientTLSInfo.TrustedCAFile, "trusted-ca-file", "", "CA that client certificates must be signed by")
	fs.BoolVar(&cfg.ClientTLSInfo.ClientCertAuth, "client-cert-auth", false, "require client certificates")
	fs.StringVar(&cfg.LogLevel, "log-level", "error", "etcd log level")
	fs.BoolVar(&cfg.UnsafeNoFsync, "unsafe-no-fsync", false, "skip fsync (tests only)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if cfg.Dir == "" {
		return fmt.Errorf("--data-dir is required")
	}
	var err error
	if cfg.ListenClientUrls, err = parseURLs(listenClient); err != nil {
		return fmt.Errorf("--listen-client-urls: %w", err)
	}
	if cfg.AdvertiseClientUrls, err = parseURLs(or(advertiseClient, listenClient)); err != nil {
		return fmt.Errorf("--advertise-client-urls: %w", err)
	}
	if cfg.ListenPeerUrls, err = parseURLs(listenPeer); err != nil {
		return fmt.Errorf("--listen-peer-urls: %w", err)
	}
	if cfg.AdvertisePeerUrls, err = parseURLs(or(advertisePeer, listenPeer)); err != nil {
		return fmt.Errorf("--initial-advertise-peer-urls: %w", err)
	}
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	cfg.LogOutputs = []string{"stderr"}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("starting etcd: %w", err)
	}
	defer e.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Println("ready")
	case <-time.After(60 * time.Second):
		return fmt.Errorf("etcd did not become ready within 60s")
	case <-ctx.Done():
		return nil
	}
	select {
	case err := <-e.Err():
		return fmt.Errorf("etcd: %w", err)
	case <-ctx.Done():
		return nil
	}
}

func parseURLs(s string) ([]url.URL, error) {
	var urls []url.URL
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		urls = append(urls, *u)
	}
	return urls, nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
