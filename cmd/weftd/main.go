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
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/etcdflags"
	"github.com/weft-net/weft/internal/version"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/kube"
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
		Name:            "weftd",
		Usage:           "weft's node daemon: lease this node's pod subnet and make every pod reachable",
		Version:         version.Get().String(),
		Flags:           flags(),
		HideHelpCommand: true,
		Action: func(c *cli.Context) error {
			cfg, err := configFrom(c, args)
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

// flannelNames are the flags flanneld has under the same name and
// meaning: FLANNELD_<NAME> sets one when WEFTD_<NAME> does not, so that a
// flanneld unit or manifest works with only the binary changed.
var flannelNames = []string{
	"etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-certfile", "etcd-keyfile", "etcd-username", "etcd-password",
	"iface", "iface-regex", "iface-can-reach", "public-ip", "public-ipv6", "subnet-file", "ip-masq", "net-config-path",
	"kube-subnet-mgr", "kubeconfig-file", "kube-api-url", "kube-annotation-prefix",
}

func flannelEnv(name string) string {
	return "FLANNELD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// withFlannelEnv adds FLANNELD_<NAME>, after WEFTD_<NAME>, to the flags
// of flannelNames.
func withFlannelEnv(fs []cli.Flag) []cli.Flag {
	for _, f := range fs {
		name := f.Names()[0]
		if !slices.Contains(flannelNames, name) {
			continue
		}
		switch f := f.(type) {
		case *cli.StringFlag:
			f.EnvVars = append(f.EnvVars, flannelEnv(name))
		case *cli.StringSliceFlag:
			f.EnvVars = append(f.EnvVars, flannelEnv(name))
		case *cli.BoolFlag:
			f.EnvVars = append(f.EnvVars, flannelEnv(name))
		default:
			panic(fmt.Sprintf("flag --%s: %T takes no FLANNELD_ variable", name, f))
		}
	}
	return fs
}

// flannelEnvUsed names the FLANNELD_ variables that set a flag: neither
// the command line args nor WEFTD_ did.
func flannelEnvUsed(args []string) []string {
	var used []string
	for _, name := range flannelNames {
		if fl := flannelEnv(name); os.Getenv(fl) != "" && os.Getenv(env(name)[0]) == "" && !onCommandLine(args, name) {
			used = append(used, fl)
		}
	}
	return used
}

// onCommandLine reports whether the flag name is among args.
func onCommandLine(args []string, name string) bool {
	for _, arg := range args[1:] {
		if n, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "="); strings.HasPrefix(arg, "-") && n == name {
			return true
		}
	}
	return false
}

func flags() []cli.Flag {
	host, _ := os.Hostname()
	fs := etcdflags.Flags("WEFTD")
	return withFlannelEnv(append(fs,
		&cli.StringSliceFlag{Name: "iface", EnvVars: env("iface"), Usage: "external interface, by name or address; repeat to give fallbacks"},
		&cli.StringSliceFlag{Name: "iface-regex", EnvVars: env("iface-regex"), Usage: "regular expression matched against interface names and addresses; repeatable"},
		&cli.StringFlag{Name: "iface-can-reach", EnvVars: env("iface-can-reach"), Usage: "use the interface of the route to this address"},
		&cli.StringFlag{Name: "public-ip", EnvVars: env("public-ip"), Usage: "IPv4 address other nodes reach this node at (default: the interface's)"},
		&cli.StringFlag{Name: "public-ipv6", EnvVars: env("public-ipv6"), Usage: "IPv6 address other nodes reach this node at (default: the interface's)"},
		&cli.StringFlag{Name: "net-config-path", EnvVars: env("net-config-path"), Usage: "read net-conf.json from this file (a mounted ConfigMap) instead of <prefix>/config", TakesFile: true},
		&cli.StringFlag{Name: "subnet-file", Value: "/run/weft/subnet.env", EnvVars: env("subnet-file"), Usage: "where to write this node's subnet (flannel's format)", TakesFile: true},
		&cli.BoolFlag{Name: "ip-masq", EnvVars: env("ip-masq"), Usage: "masquerade pod traffic leaving the pod network"},
		&cli.StringFlag{Name: "healthz-addr", Value: "127.0.0.1:8285", EnvVars: env("healthz-addr"), Usage: "serve /healthz, /readyz, /metrics and /status here; empty disables"},
		&cli.StringFlag{Name: "metrics-addr", EnvVars: env("metrics-addr"), Usage: "also serve /metrics, /healthz and /readyz (not /status) here, e.g. :9285 for a cluster's Prometheus; empty disables"},
		&cli.StringFlag{Name: "node-name", Value: host, EnvVars: append(env("node-name"), "NODE_NAME"), Usage: "this node's name, recorded in its lease (with --kube-subnet-mgr: its Node; NODE_NAME from the downward API works too)"},
		&cli.BoolFlag{Name: "kube-subnet-mgr", EnvVars: env("kube-subnet-mgr"), Usage: "take this node's subnet from its Node's podCIDR and the other nodes' from the Kubernetes API, instead of etcd (needs --net-config-path)"},
		&cli.StringFlag{Name: "kubeconfig-file", EnvVars: env("kubeconfig-file"), Usage: "kubeconfig for --kube-subnet-mgr outside a pod (default: the pod's service account)", TakesFile: true},
		&cli.StringFlag{Name: "kube-api-url", EnvVars: env("kube-api-url"), Usage: "the Kubernetes API server's URL, overriding the kubeconfig's"},
		&cli.StringFlag{Name: "kube-annotation-prefix", Value: kube.DefaultPrefix, EnvVars: env("kube-annotation-prefix"), Usage: "prefix of the Node annotations weft publishes and reads; flannel.alpha.coreos.com shares a cluster with flannel nodes"},
		&cli.DurationFlag{Name: "lease-ttl", Value: 24 * time.Hour, EnvVars: env("lease-ttl"), Usage: "TTL of the etcd lease on this node's subnet; kept alive while weftd runs"},
		&cli.DurationFlag{Name: "resync-interval", Value: 5 * time.Second, EnvVars: env("resync-interval"), Usage: "how often to compare the kernel with the leases and repair drift"},
		&cli.IntFlag{Name: "gc-percent", Value: 25, EnvVars: env("gc-percent"), Usage: "once ready, how far (in percent) the Go heap may grow over live data before a collection (lower: less memory, more CPU); the GOGC environment variable, when set, wins"},
		&cli.StringSliceFlag{Name: "bgp-peer-address", EnvVars: env("bgp-peer-address"), Usage: "a router this node peers with over BGP, besides the cluster's (net-conf.json BGP.Peers); repeatable"},
		&cli.StringSliceFlag{Name: "bgp-peer-asn", EnvVars: env("bgp-peer-asn"), Usage: "the AS number of each --bgp-peer-address, or one for all of them"},
		&cli.StringSliceFlag{Name: "bgp-peer-port", EnvVars: env("bgp-peer-port"), Usage: "the BGP port of each --bgp-peer-address, or one for all (default 179)"},
		&cli.StringFlag{Name: "bgp-password", EnvVars: env("bgp-password"), Usage: "TCP MD5 password of this node's BGP sessions: only as WEFTD_BGP_PASSWORD (never on the command line, where ps shows it)"},
		&cli.StringFlag{Name: "bgp-password-file", EnvVars: env("bgp-password-file"), Usage: "file holding the TCP MD5 password of this node's BGP sessions", TakesFile: true},
		&cli.StringFlag{Name: "bgp-router-id", EnvVars: env("bgp-router-id"), Usage: "BGP router ID, an IPv4 address (default: the node's IPv4 address; required on IPv6-only nodes)"},
		&cli.StringFlag{Name: "bgp-asn", EnvVars: env("bgp-asn"), Usage: "this node's AS number (default: the cluster's BGP.ASN, else 64512)"},
		&cli.IntFlag{Name: "bgp-listen-port", Value: 179, EnvVars: env("bgp-listen-port"), Usage: "port routers may connect to; 0: only dial out"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("log-level"), Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: env("log-format"), Usage: "text or json"},
	))
}

// configFrom turns the flags into a daemon.Config; args is the command
// line, to tell a flag given there from one set in the environment.
func configFrom(c *cli.Context, args []string) (*daemon.Config, error) {
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
		MetricsAddr:    c.String("metrics-addr"),
		NodeName:       c.String("node-name"),
		ResyncInterval: c.Duration("resync-interval"),
		GCPercent:      c.Int("gc-percent"),
		Kube: daemon.Kube{
			Enabled: c.Bool("kube-subnet-mgr"), Kubeconfig: c.String("kubeconfig-file"),
			APIURL: c.String("kube-api-url"), AnnotationPrefix: c.String("kube-annotation-prefix"),
		},
		Log: logger,
	}
	if used := flannelEnvUsed(args); len(used) > 0 {
		logger.WithField("variables", strings.Join(used, ",")).Info("using flanneld's environment variables (no WEFTD_ variable of the same name is set)")
	}
	if cfg.BGP, err = bgpFrom(c, args); err != nil {
		return nil, err
	}
	for _, a := range []struct {
		flag string
		dst  *netip.Addr
	}{{"iface-can-reach", &cfg.IfaceCanReach}, {"public-ip", &cfg.PublicIP}, {"public-ipv6", &cfg.PublicIPv6}, {"bgp-router-id", &cfg.BGP.RouterID}} {
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

// bgpFrom reads the --bgp-* flags: peers as positional lists (one ASN and
// port per address, or one for all), the password from the environment or
// a file, never from the command line args.
func bgpFrom(c *cli.Context, args []string) (daemon.NodeBGP, error) {
	bad := func(format string, args ...any) error {
		return &daemon.InvalidError{Err: fmt.Errorf(format, args...)}
	}
	b := daemon.NodeBGP{ListenPort: c.Int("bgp-listen-port")}
	if onCommandLine(args, "bgp-password") {
		return b, bad("--bgp-password on the command line is visible to every user of the node (ps); give it as WEFTD_BGP_PASSWORD or in --bgp-password-file")
	}
	b.Password = c.String("bgp-password")
	if f := c.String("bgp-password-file"); f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			return b, bad("--bgp-password-file: %v", err)
		}
		b.Password = strings.TrimRight(string(data), "\r\n")
		if b.Password == "" {
			return b, bad("--bgp-password-file %s is empty", f)
		}
	}
	if len(b.Password) > 80 {
		return b, bad("the BGP password is %d characters long; TCP MD5 takes at most 80", len(b.Password))
	}
	if s := c.String("bgp-asn"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err == nil {
			err = subnet.CheckASN("--bgp-asn", v)
		} else {
			err = fmt.Errorf("--bgp-asn %q is not a number", s)
		}
		if err != nil {
			return b, &daemon.InvalidError{Err: err}
		}
		b.ASN = uint32(v)
	}
	addrs := nonEmpty(c.StringSlice("bgp-peer-address"))
	asns, ports := nonEmpty(c.StringSlice("bgp-peer-asn")), nonEmpty(c.StringSlice("bgp-peer-port"))
	if len(addrs) == 0 {
		if len(asns)+len(ports) > 0 {
			return b, bad("--bgp-peer-asn and --bgp-peer-port need --bgp-peer-address")
		}
		return b, nil
	}
	nth := func(flag string, list []string, i int, dflt string) (string, error) {
		switch len(list) {
		case 0:
			if dflt == "" {
				return "", bad("%s is missing; give the AS number of each --bgp-peer-address, or one for all", flag)
			}
			return dflt, nil
		case 1:
			return list[0], nil
		case len(addrs):
			return list[i], nil
		}
		return "", bad("%s has %d values for %d --bgp-peer-address; give one for all peers or one per peer", flag, len(list), len(addrs))
	}
	for i, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil || ip.Zone() != "" || ip.Is4In6() {
			return b, bad("--bgp-peer-address %q is not an IP address", a)
		}
		asn, err := nth("--bgp-peer-asn", asns, i, "")
		if err != nil {
			return b, err
		}
		v, err := strconv.ParseUint(asn, 10, 64)
		if err == nil {
			err = subnet.CheckASN("--bgp-peer-asn", v)
		} else {
			err = fmt.Errorf("--bgp-peer-asn %q is not a number", asn)
		}
		if err != nil {
			return b, &daemon.InvalidError{Err: err}
		}
		port, err := nth("--bgp-peer-port", ports, i, "179")
		if err != nil {
			return b, err
		}
		p, err := strconv.Atoi(port)
		if err != nil || p < 1 || p > 65535 {
			return b, bad("--bgp-peer-port %q is out of range; use 1 to 65535", port)
		}
		b.Peers = append(b.Peers, subnet.BGPPeer{Address: ip, ASN: uint32(v), Port: uint16(p)})
	}
	return b, nil
}

func nonEmpty(list []string) []string {
	var out []string
	for _, s := range list {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
