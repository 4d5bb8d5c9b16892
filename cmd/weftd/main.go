// Command weftd is weft's node daemon. main is wiring: flags become a
// daemon.Config, and daemon.Run does the work until SIGTERM or SIGINT.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/etcdflags"
	"github.com/weft-net/weft/internal/version"
	"github.com/weft-net/weft/subnet"
)

// Exit statuses, as the README documents them.
const (
	exitFailure = 1
	exitInvalid = 2
)

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	code := 0
	app := &cli.App{
		Name:    "weftd",
		Usage:   "weft's node daemon: lease this node's pod subnet and make every pod reachable",
		Version: version.Version,
		Flags:   flags(),
		Action: func(c *cli.Context) error {
			cfg, err := configFrom(c)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			err = daemon.Run(ctx, cfg)
			if err == nil {
				cfg.Log.Info("stopped")
			}
			return err
		},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return &daemon.InvalidError{Err: err}
		},
		ExitErrHandler: func(*cli.Context, error) {},
	}
	if err := app.Run(args); err != nil {
		fmt.Fprintln(os.Stderr, "weftd:", err)
		code = exitFailure
		var invalid *daemon.InvalidError
		var badConfig *subnet.ConfigError
		if errors.As(err, &invalid) || errors.As(err, &badConfig) {
			code = exitInvalid
		}
	}
	return code
}

func env(name string) []string {
	return []string{"WEFTD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
}

func flags() []cli.Flag {
	host, _ := os.Hostname()
	fs := etcdflags.Flags("WEFTD")
	return append(fs,
		&cli.StringSliceFlag{Name: "iface", EnvVars: env("iface"), Usage: "external interface, by name or address; repeat to give fallbacks"},
		&cli.StringSliceFlag{Name: "iface-regex", EnvVars: env("iface-regex"), Usage: "regular expression matched against interface names and addresses; repeatable"},
		&cli.StringFlag{Name: "iface-can-reach", EnvVars: env("iface-can-reach"), Usage: "use the interface of the route to this address"},
		&cli.StringFlag{Name: "public-ip", EnvVars: env("public-ip"), Usage: "IPv4 address other nodes reach this node at (default: the interface's)"},
		&cli.StringFlag{Name: "public-ipv6", EnvVars: env("public-ipv6"), Usage: "IPv6 address other nodes reach this node at (default: the interface's)"},
		&cli.StringFlag{Name: "net-config-path", EnvVars: env("net-config-path"), Usage: "read net-conf.json from this file (a mounted ConfigMap) instead of <prefix>/config", TakesFile: true},
		&cli.StringFlag{Name: "subnet-file", Value: "/run/weft/subnet.env", EnvVars: env("subnet-file"), Usage: "where to write this node's subnet (flannel's format)", TakesFile: true},
		&cli.BoolFlag{Name: "ip-masq", EnvVars: env("ip-masq"), Usage: "masquerade pod traffic leaving the pod network"},
		&cli.StringFlag{Name: "healthz-addr", Value: "127.0.0.1:8285", EnvVars: env("healthz-addr"), Usage: "serve /healthz, /readyz, /metrics and /status here; empty disables"},
		&cli.StringFlag{Name: "node-name", Value: host, EnvVars: env("node-name"), Usage: "this node's name, recorded in its lease"},
		&cli.DurationFlag{Name: "lease-ttl", Value: 24 * time.Hour, EnvVars: env("lease-ttl"), Usage: "TTL of the etcd lease on this node's subnet; kept alive while weftd runs"},
		&cli.DurationFlag{Name: "resync-interval", Value: 5 * time.Second, EnvVars: env("resync-interval"), Usage: "how often to compare the kernel with the leases and repair drift"},
		&cli.IntFlag{Name: "gc-percent", Value: 25, EnvVars: env("gc-percent"), Usage: "once ready, how far (in percent) the Go heap may grow over live data before a collection (lower: less memory, more CPU); the GOGC environment variable, when set, wins"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("log-level"), Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: env("log-format"), Usage: "text or json"},
	)
}

// configFrom turns the flags into a daemon.Config.
func configFrom(c *cli.Context) (*daemon.Config, error) {
	if c.NArg() > 0 {
		return nil, &daemon.InvalidError{Err: fmt.Errorf("unexpected argument %q; weftd takes only flags", c.Args().First())}
	}
	logger := logrus.New()
	level, err := logrus.ParseLevel(c.String("log-level"))
	if err != nil {
		return nil, &daemon.InvalidError{Err: fmt.Errorf("--log-level %q is unknown; use debug, info, warn or error", c.String("log-level"))}
	}
	logger.SetLevel(level)
	switch c.String("log-format") {
	case "text":
		logger.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	case "json":
		logger.SetFormatter(&logrus.JSONFormatter{})
	default:
		return nil, &daemon.InvalidError{Err: fmt.Errorf("--log-format %q is unknown; use text or json", c.String("log-format"))}
	}

	cfg := &daemon.Config{
		Etcd:           etcdflags.ClientConfig(c),
		Prefix:         c.String("etcd-prefix"),
		LeaseTTL:       c.Duration("lease-ttl"),
		Ifaces:         c.StringSlice("iface"),
		IfaceRegex:     c.StringSlice("iface-regex"),
		NetConfigPath:  c.String("net-config-path"),
		SubnetFile:     c.String("subnet-file"),
		IPMasq:         c.Bool("ip-masq"),
		HealthzAddr:    c.String("healthz-addr"),
		NodeName:       c.String("node-name"),
		ResyncInterval: c.Duration("resync-interval"),
		GCPercent:      c.Int("gc-percent"),
		Log:            logger,
	}
	for _, a := range []struct {
		flag string
		dst  *netip.Addr
	}{{"iface-can-reach", &cfg.IfaceCanReach}, {"public-ip", &cfg.PublicIP}, {"public-ipv6", &cfg.PublicIPv6}} {
		if s := c.String(a.flag); s != "" {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, &daemon.InvalidError{Err: fmt.Errorf("--%s %q is not an IP address", a.flag, s)}
			}
			*a.dst = ip
		}
	}
	return cfg, nil
}
