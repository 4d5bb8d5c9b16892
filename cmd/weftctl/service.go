package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/service"
	svcetcd "github.com/weft-net/weft/service/etcd"
	"github.com/weft-net/weft/subnet"
)

func serviceCommand() *cli.Command {
	nameArg := func(c *cli.Context, verb string) (string, string, error) {
		if c.NArg() < 1 {
			return "", "", cli.Exit(fmt.Sprintf("service %s takes NAMESPACE/NAME", verb), 2)
		}
		ns, name, err := service.ParseName(c.Args().First())
		if err != nil {
			return "", "", cli.Exit(fmt.Sprintf("service %s: %v", verb, err), 2)
		}
		return ns, name, nil
	}
	return &cli.Command{
		Name:  "service",
		Usage: "add, change, list and remove services (virtual IPs in front of pods)",
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "define a service; a VIP is allocated from the service network when none is given",
				ArgsUsage: "NAMESPACE/NAME",
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "port", Usage: "PORT[/PROTO][:TARGET], e.g. 80/tcp:8080 (repeatable; PROTO tcp, udp or sctp, default tcp)"},
					&cli.StringSliceFlag{Name: "node-port", Usage: "node port of each --port in order (repeatable)"},
					&cli.StringSliceFlag{Name: "vip", Usage: "virtual IP (repeatable, one per family; default: allocated)"},
					&cli.StringSliceFlag{Name: "endpoint", Usage: "pod address (repeatable)"},
					&cli.StringFlag{Name: "traffic-policy", Value: string(service.Cluster), Usage: "Cluster or Local"},
					&cli.DurationFlag{Name: "affinity", Usage: "session affinity by client address, e.g. 3h (default: none)"},
					&cli.BoolFlag{Name: "advertise", Usage: "announce the VIPs over BGP (default: the network's BGP.AdvertiseServiceVIPs); --advertise=false keeps this service off BGP"},
					&cli.StringSliceFlag{Name: "community", Usage: "BGP community on the VIPs' routes, ASN:VALUE (repeatable)"},
					&cli.BoolFlag{Name: "replace", Usage: "replace the service if it exists"},
				},
				Action: func(c *cli.Context) error {
					ns, name, err := nameArg(c, "add")
					if err != nil {
						return err
					}
					svc, err := serviceFromFlags(c, ns, name)
					if err != nil {
						return cli.Exit(fmt.Sprintf("service %s/%s: %v; nothing was written", ns, name, err), 2)
					}
					store, cfg, closeStore, err := openServices(c)
					if err != nil {
						return err
					}
					defer closeStore()
					allocate := []bool{cfg.Services.IPv4.IsValid(), cfg.Services.IPv6.IsValid()}
					if len(svc.VIPs) > 0 {
						allocate = nil
					}
					out, err := store.Put(c.Context, svc, cfg, !c.Bool("replace"), 0, allocate...)
					if err != nil {
						return refusal(err)
					}
					fmt.Fprintf(c.App.Writer, "service %s: %s\n", out.Key(), describeService(out))
					return nil
				},
			},
			{
				Name:      "endpoints",
				Usage:     "replace the endpoints of a service",
				ArgsUsage: "NAMESPACE/NAME IP...",
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "not-ready", Usage: "an endpoint that takes no new connections (repeatable; it is added if not among IP...)"},
				},
				Action: func(c *cli.Context) error {
					ns, name, err := nameArg(c, "endpoints")
					if err != nil {
						return err
					}
					var eps []service.Endpoint
					seen := map[netip.Addr]bool{}
					notReady := map[netip.Addr]bool{}
					args := c.Args().Slice()[1:]
					for _, s := range c.StringSlice("not-ready") { // in the order given: the same command writes the same list
						ip, err := netip.ParseAddr(strings.TrimSpace(s))
						if err != nil {
							return cli.Exit(fmt.Sprintf("service %s/%s: --not-ready %q is not an IP address; nothing was written", ns, name, s), 2)
						}
						notReady[ip] = true
						args = append(args, ip.String())
					}
					for i, s := range args {
						ip, err := netip.ParseAddr(s)
						if err != nil {
							return cli.Exit(fmt.Sprintf("service %s/%s: endpoints[%d] %q is not an IP address; nothing was written", ns, name, i, s), 2)
						}
						if seen[ip] {
							continue
						}
						seen[ip] = true
						ep := service.Endpoint{Address: ip}
						if notReady[ip] {
							f := false
							ep.Ready = &f
						}
						eps = append(eps, ep)
					}
					return withServices(c, func(store *svcetcd.Store, cfg *subnet.Config) error {
						svc, err := store.SetEndpoints(c.Context, cfg, ns, name, eps)
						if err != nil {
							return refusal(err)
						}
						fmt.Fprintf(c.App.Writer, "service %s: %s\n", svc.Key(), describeService(svc))
						return nil
					})
				},
			},
			{
				Name:      "rm",
				Usage:     "remove a service and release its VIPs and node ports",
				ArgsUsage: "NAMESPACE/NAME",
				Action: func(c *cli.Context) error {
					ns, name, err := nameArg(c, "rm")
					if err != nil {
						return err
					}
					return withServices(c, func(store *svcetcd.Store, _ *subnet.Config) error {
						if err := store.Delete(c.Context, ns, name); err != nil {
							return refusal(err)
						}
						fmt.Fprintf(c.App.Writer, "removed service %s/%s\n", ns, name)
						return nil
					})
				},
			},
			{
				Name:      "get",
				Usage:     "print a service as JSON",
				ArgsUsage: "NAMESPACE/NAME",
				Action: func(c *cli.Context) error {
					ns, name, err := nameArg(c, "get")
					if err != nil {
						return err
					}
					return withServices(c, func(store *svcetcd.Store, _ *subnet.Config) error {
						svc, _, err := store.Get(c.Context, ns, name)
						if err != nil {
							return refusal(err)
						}
						return writeJSON(c.App.Writer, toListed(svc))
					})
				},
			},
			{
				Name:  "list",
				Usage: "list the services",
				Flags: []cli.Flag{&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}},
				Action: func(c *cli.Context) error {
					format := c.String("output")
					if format != "table" && format != "json" {
						return cli.Exit(fmt.Sprintf("--output %q is unknown; use table or json", format), 2)
					}
					store, _, closeStore, err := openServices(c)
					if err != nil {
						return err
					}
					defer closeStore()
					listing, err := store.List(c.Context)
					if err != nil {
						return err
					}
					var rows []listed
					for _, e := range listing.Entries {
						if e.Err != nil {
							fmt.Fprintf(c.App.ErrWriter, "weftctl: warning: %v\n", e.Err)
							continue
						}
						rows = append(rows, toListed(e.Item))
					}
					sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
					if format == "json" {
						if rows == nil {
							rows = []listed{}
						}
						return writeJSON(c.App.Writer, rows)
					}
					printServices(c.App.Writer, rows)
					return nil
				},
			},
		},
	}
}

// listed is a service as list and get show it.
type listed struct {
	Name                   string             `json:"name"`
	VIPs                   []netip.Addr       `json:"vips"`
	Ports                  []service.Port     `json:"ports"`
	Endpoints              []service.Endpoint `json:"endpoints"`
	TrafficPolicy          service.Policy     `json:"trafficPolicy"`
	AffinityTimeoutSeconds int                `json:"affinityTimeoutSeconds,omitempty"`
	Advertise              *bool              `json:"advertise,omitempty"`
	Communities            []string           `json:"communities,omitempty"`
}

func toListed(s *service.Service) listed {
	l := listed{Name: s.Key(), VIPs: s.VIPs, Ports: s.Ports, Endpoints: s.Endpoints, TrafficPolicy: s.TrafficPolicy, AffinityTimeoutSeconds: s.AffinityTimeoutSeconds,
		Advertise: s.Advertise, Communities: s.Communities}
	if l.Endpoints == nil {
		l.Endpoints = []service.Endpoint{}
	}
	return l
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printServices(w io.Writer, rows []listed) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NAME\tVIPS\tPORTS\tENDPOINTS\tPOLICY\tAFFINITY\n")
	for _, r := range rows {
		var vips, ports []string
		for _, v := range r.VIPs {
			vips = append(vips, v.String())
		}
		for _, p := range r.Ports {
			ports = append(ports, portString(p))
		}
		ready := 0
		for _, e := range r.Endpoints {
			if e.IsReady() {
				ready++
			}
		}
		affinity := "-"
		if r.AffinityTimeoutSeconds > 0 {
			affinity = (time.Duration(r.AffinityTimeoutSeconds) * time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d ready\t%s\t%s\n", r.Name, strings.Join(vips, ","), strings.Join(ports, ","), ready, len(r.Endpoints), r.TrafficPolicy, affinity)
	}
	tw.Flush()
}

func portString(p service.Port) string {
	s := fmt.Sprintf("%d/%s", p.Port, strings.ToLower(string(p.Protocol)))
	if p.Target() != p.Port {
		s += fmt.Sprintf(":%d", p.Target())
	}
	if p.NodePort != 0 {
		s += fmt.Sprintf(" (node %d)", p.NodePort)
	}
	return s
}

func describeService(s *service.Service) string {
	var vips, ports []string
	for _, v := range s.VIPs {
		vips = append(vips, v.String())
	}
	for _, p := range s.Ports {
		ports = append(ports, portString(p))
	}
	return fmt.Sprintf("VIPs %s, ports %s, %d endpoints, traffic policy %s", strings.Join(vips, " "), strings.Join(ports, " "), len(s.Endpoints), s.TrafficPolicy)
}

// serviceFromFlags builds a service from add's flags; its errors name the
// flag.
func serviceFromFlags(c *cli.Context, ns, name string) (*service.Service, error) {
	svc := &service.Service{Namespace: ns, Name: name, TrafficPolicy: service.Policy(c.String("traffic-policy"))}
	if d := c.Duration("affinity"); d != 0 {
		if d < time.Second || d%time.Second != 0 {
			return nil, fmt.Errorf("--affinity %v must be whole seconds, at least 1s", d)
		}
		svc.AffinityTimeoutSeconds = int(d / time.Second)
	}
	ports := c.StringSlice("port")
	if len(ports) == 0 {
		return nil, errors.New("--port is missing; give at least one PORT[/PROTO][:TARGET]")
	}
	for _, spec := range ports {
		p, err := parsePortFlag(spec)
		if err != nil {
			return nil, err
		}
		svc.Ports = append(svc.Ports, p)
	}
	nodePorts := c.StringSlice("node-port")
	if len(nodePorts) > len(svc.Ports) {
		return nil, fmt.Errorf("--node-port is given %d times for %d --port", len(nodePorts), len(svc.Ports))
	}
	for i, s := range nodePorts {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("--node-port %q is not a port", s)
		}
		svc.Ports[i].NodePort = uint16(n)
	}
	for _, s := range c.StringSlice("vip") {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("--vip %q is not an IP address", s)
		}
		svc.VIPs = append(svc.VIPs, ip)
	}
	if c.IsSet("advertise") {
		adv := c.Bool("advertise")
		svc.Advertise = &adv
	}
	svc.Communities = c.StringSlice("community")
	for _, s := range c.StringSlice("endpoint") {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("--endpoint %q is not an IP address", s)
		}
		svc.Endpoints = append(svc.Endpoints, service.Endpoint{Address: ip})
	}
	return svc, nil
}

// parsePortFlag reads PORT[/PROTO][:TARGET].
func parsePortFlag(spec string) (service.Port, error) {
	rest, target, hasTarget := strings.Cut(spec, ":")
	port, proto, hasProto := strings.Cut(rest, "/")
	p := service.Port{Protocol: service.TCP}
	if hasProto {
		p.Protocol = service.Protocol(strings.ToUpper(proto))
	}
	n, err := strconv.ParseUint(port, 10, 32)
	if err != nil {
		return p, fmt.Errorf("--port %q: %q is not a port number", spec, port)
	}
	if n == 0 || n > 65535 {
		return p, fmt.Errorf("--port %q: port %d is out of range; use 1 to 65535", spec, n)
	}
	p.Port = uint16(n)
	if hasTarget {
		t, err := strconv.ParseUint(target, 10, 32)
		if err != nil || t == 0 || t > 65535 {
			return p, fmt.Errorf("--port %q: target port %q is out of range; use 1 to 65535", spec, target)
		}
		p.TargetPort = uint16(t)
	}
	return p, nil
}

// refusal turns an error of the store into weftctl's: exit status 2, one
// line, for a definition weft refuses.
func refusal(err error) error {
	var invalid *service.ValidationError
	var conflict *svcetcd.ConflictError
	switch {
	case errors.As(err, &invalid), errors.As(err, &conflict):
		return cli.Exit(err.Error()+"; nothing was written", 2)
	case errors.Is(err, svcetcd.ErrExists):
		return cli.Exit(err.Error(), 2)
	case errors.Is(err, svcetcd.ErrNotFound):
		return cli.Exit(err.Error(), 1)
	}
	return err
}

// withServices runs f with the service store and the network
// configuration, and closes the store.
func withServices(c *cli.Context, f func(*svcetcd.Store, *subnet.Config) error) error {
	store, cfg, closeStore, err := openServices(c)
	if err != nil {
		return err
	}
	defer closeStore()
	return f(store, cfg)
}

// openServices opens the service store and reads the network
// configuration the services are checked against.
func openServices(c *cli.Context) (*svcetcd.Store, *subnet.Config, func(), error) {
	store, closeStore, err := openStore(c)
	if err != nil {
		return nil, nil, nil, err
	}
	cfg, _, err := store.GetConfig(c.Context)
	if err != nil {
		closeStore()
		return nil, nil, nil, fmt.Errorf("services are checked against the network configuration: %w", err)
	}
	return svcetcd.New(store.Client(), c.String("etcd-prefix"), nil), cfg, closeStore, nil
}
