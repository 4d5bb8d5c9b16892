// Package etcd is weft's subnet lease store in etcd, in flannel's layout:
// <prefix>/config holds net-conf.json and <prefix>/subnets/<key> one lease
// per node, each key attached to an etcd lease that its holder keeps alive.
package etcd

import (
	"crypto/tls"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
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
}

// NewClient returns an etcd client. It does not wait for etcd: calls made
// while etcd is unreachable fail (or block until their context ends), and
// the client reconnects by itself.
func NewClient(cfg ClientConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("no etcd endpoints given")
	}
	var tlsConfig *tls.Config
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		if (cfg.CertFile == "") != (cfg.KeyFile == "") {
			return nil, fmt.Errorf("etcd client certificate needs both --etcd-certfile and --etcd-keyfile")
		}
		info := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		var err error
		if tlsConfig, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("loading etcd TLS files: %w", err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  tlsConfig,
		Username:             cfg.Username,
		Password:             cfg.Password,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("creating etcd client for %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}
