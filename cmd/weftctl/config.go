package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcd"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "read or write the network configuration (net-conf.json) in etcd",
		Subcommands: []*cli.Command{
			{
				Name:  "get",
				Usage: "print the configuration stored in etcd",
				Action: func(c *cli.Context) error {
					store, closeStore, err := openStore(c)
					if err != nil {
						return err
					}
					defer closeStore()
					cfg, warnings, err := store.GetConfig(c.Context)
					var bad *subnet.ConfigError
					switch {
					case errors.As(err, &bad):
						return fmt.Errorf("the configuration at %s is invalid: %w", store.ConfigKey(), err)
					case err != nil:
						return err
					}
					printWarnings(c.App.ErrWriter, warnings)
					c.App.Writer.Write(cfg.Raw)
					if n := len(cfg.Raw); n > 0 && cfg.Raw[n-1] != '\n' {
						fmt.Fprintln(c.App.Writer)
					}
					return nil
				},
			},
			{
				Name:      "set",
				Usage:     "validate FILE (- for standard input) and write it to etcd",
				ArgsUsage: "FILE",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "force", Usage: "write a range of new subnets (SubnetMin, SubnetMax) that leaves existing leases outside it"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return cli.Exit("config set takes exactly one FILE (or - for standard input)", 2)
					}
					name := c.Args().First()
					data, err := readInput(name, c.App.Reader)
					if err != nil {
						return cli.Exit(fmt.Sprintf("reading %s: %v", name, err), 2)
					}
					cfg, warnings, err := subnet.ParseConfig(data)
					if err != nil {
						return cli.Exit(fmt.Sprintf("%s: %v; nothing was written", name, err), 2)
					}
					printWarnings(c.App.ErrWriter, warnings)
					store, closeStore, err := openStore(c)
					if err != nil {
						return err
					}
					defer closeStore()
					listing, err := store.List(c.Context)
					if err != nil {
						return err
					}
					if out := outsideRange(listing, cfg); len(out) > 0 {
						msg := fmt.Sprintf("%d existing leases lie outside the range of new subnets: %s; their nodes keep them "+
							"(a lease anywhere in the network is valid), but a node whose lease is lost gets a new subnet inside the range",
							len(out), strings.Join(out, ", "))
						if !c.Bool("force") {
							return cli.Exit(fmt.Sprintf("%s: %s; give --force to write it anyway; nothing was written", name, msg), 2)
						}
						printWarnings(c.App.ErrWriter, []string{msg})
					}
					if cur, _, err := store.GetConfig(c.Context); err == nil {
						printWarnings(c.App.ErrWriter, describeChange(cur, cfg))
					}
					if err := store.PutConfig(c.Context, cfg); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "wrote %s\n", store.ConfigKey())
					return nil
				},
			},
		},
	}
}

func readInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(stdin)
	}
	return os.ReadFile(name)
}

func printWarnings(w io.Writer, warnings []string) {
	for _, msg := range warnings {
		fmt.Fprintln(w, "weftctl: warning:", msg)
	}
}

// describeChange says what writing next over cur will do to running nodes.
func describeChange(cur, next *subnet.Config) []string {
	var out []string
	for _, f := range []struct {
		name     string
		from, to subnet.Pool
	}{{"IPv4 network", cur.IPv4, next.IPv4}, {"IPv6 network", cur.IPv6, next.IPv6}} {
		switch {
		case f.from == f.to:
		case f.from.Network == f.to.Network && f.from.SubnetLen == f.to.SubnetLen:
			out = append(out, fmt.Sprintf("the range of new subnets of the %s changes from %s–%s to %s–%s: running nodes apply it "+
				"to the subnets they lease from now on; existing leases keep their subnets", f.name, f.from.Min, f.from.Max, f.to.Min, f.to.Max))
		default:
			out = append(out, fmt.Sprintf("the %s changes from %s to %s: running weftd nodes refuse this (it cannot be applied "+
				"under running pods) and keep the current one until they restart; plan a restart of every node and its pods",
				f.name, describePool(f.from), describePool(f.to)))
		}
	}
	if cur.Backend != next.Backend {
		out = append(out, fmt.Sprintf("this switches the backend from %s to %s: every weftd applies it live, and nodes keep "+
			"reaching peers on the old backend until those have switched too", describeBackend(cur.Backend), describeBackend(next.Backend)))
	}
	return out
}

func describePool(p subnet.Pool) string {
	if !p.Enabled() {
		return "none"
	}
	return fmt.Sprintf("%s (/%d per node, %s to %s)", p.Network, p.SubnetLen, p.Min, p.Max)
}

func describeBackend(b subnet.Backend) string {
	s := b.Type
	var opts []string
	if b.Type == subnet.BackendVXLAN {
		opts = append(opts, fmt.Sprintf("VNI %d", b.VNI))
		if b.Port != 0 {
			opts = append(opts, fmt.Sprintf("port %d", b.Port))
		}
	}
	if b.MTU != 0 {
		opts = append(opts, fmt.Sprintf("MTU %d", b.MTU))
	}
	if b.DirectRouting {
		opts = append(opts, "DirectRouting")
	}
	if len(opts) > 0 {
		s += " (" + strings.Join(opts, ", ") + ")"
	}
	return s
}

// outsideRange names the leases of listing inside next's networks but
// outside its range of new subnets (SubnetMin to SubnetMax).
func outsideRange(listing *etcd.Listing, next *subnet.Config) []string {
	var out []string
	for _, e := range listing.Entries {
		if e.Err != nil {
			continue
		}
		for sn := range e.Item.Subnets {
			p := next.IPv4
			if sn.Addr().Is6() {
				p = next.IPv6
			}
			if !p.Enabled() || !p.Network.Contains(sn.Addr()) {
				continue
			}
			if sn.Addr().Compare(p.Min) < 0 || sn.Addr().Compare(p.Max) > 0 {
				who := sn.String()
				if e.Item.Node != "" {
					who += " (" + e.Item.Node + ")"
				}
				out = append(out, who)
			}
		}
	}
	return out
}
