// Package etcdflags defines the etcd connection flags weftd and weftctl
// share, named as flanneld names them.
package etcdflags

import (
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/subnet/etcd"
)

// Flags returns the etcd flags, each also read from <envPrefix>_<NAME>
// (e.g. WEFTD_ETCD_ENDPOINTS); the command line wins.
func Flags(envPrefix string) []cli.Flag {
	env := func(name string) []string {
		return []string{envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
	}
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "etcd-endpoints", Value: cli.NewStringSlice("http://127.0.0.1:2379"), EnvVars: env("etcd-endpoints"), Usage: "etcd endpoints, comma-separated"},
		&cli.StringFlag{Name: "etcd-prefix", Value: etcd.DefaultPrefix, EnvVars: env("etcd-prefix"), Usage: "etcd key prefix (/coreos.com/network joins a flannel cluster)"},
		&cli.StringFlag{Name: "etcd-cafile", EnvVars: env("etcd-cafile"), Usage: "CA certificate that signs etcd's server certificate", TakesFile: true},
		&cli.StringFlag{Name: "etcd-certfile", EnvVars: env("etcd-certfile"), Usage: "client certificate for etcd", TakesFile: true},
		&cli.StringFlag{Name: "etcd-keyfile", EnvVars: env("etcd-keyfile"), Usage: "client key for etcd", TakesFile: true},
		&cli.StringFlag{Name: "etcd-username", EnvVars: env("etcd-username"), Usage: "etcd user name"},
		&cli.StringFlag{Name: "etcd-password", EnvVars: env("etcd-password"), Usage: "etcd password (prefer the environment variable)"},
	}
}

// ClientConfig reads the flags defined by Flags.
func ClientConfig(c *cli.Context) etcd.ClientConfig {
	var endpoints []string
	for _, e := range c.StringSlice("etcd-endpoints") {
		if e = strings.TrimSpace(e); e != "" {
			endpoints = append(endpoints, e)
		}
	}
	return etcd.ClientConfig{
		Endpoints: endpoints,
		CAFile:    c.String("etcd-cafile"),
		CertFile:  c.String("etcd-certfile"),
		KeyFile:   c.String("etcd-keyfile"),
		Username:  c.String("etcd-username"),
		Password:  c.String("etcd-password"),
	}
}
