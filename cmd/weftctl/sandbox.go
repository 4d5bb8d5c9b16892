package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/subnet"
)

func sandboxCommand() *cli.Command {
	dirFlag := &cli.StringFlag{Name: "dir", Value: "/run/weft-sandbox", Usage: "where the sandbox keeps its state, logs and etcd data"}
	return &cli.Command{
		Name:  "sandbox",
		Usage: "run a weft cluster on this machine in network namespaces (needs root)",
		Subcommands: []*cli.Command{
			{
				Name:  "up",
				Usage: "start etcd and N nodes running weftd, each with pods",
				Flags: []cli.Flag{
					dirFlag,
					&cli.StringFlag{Name: "name", Value: "weft", Usage: "prefix of the namespaces it creates"},
					&cli.IntFlag{Name: "nodes", Value: 3, Usage: "how many nodes"},
					&cli.IntFlag{Name: "pods", Value: 1, Usage: "pods per node"},
					&cli.StringFlag{Name: "backend", Value: subnet.BackendVXLAN, Usage: "vxlan or host-gw"},
					&cli.BoolFlag{Name: "ip-masq", Usage: "pass --ip-masq to every weftd"},
					&cli.BoolFlag{Name: "ipv6", Usage: "dual-stack: IPv6 underlay (fd18::/64) and pod network (fd96::/48) too"},
					&cli.BoolFlag{Name: "kube", Usage: "Kubernetes mode: run kube-apiserver and kube-controller-manager (bin/, make kube-bins) and every weftd with --kube-subnet-mgr"},
					&cli.StringFlag{Name: "router", Usage: "add an upstream router, bird or frr, peering with every node over BGP, and an outside network (203.0.113.0/24) behind it"},
				},
				Action: sandboxUp,
			},
			{
				Name:   "status",
				Usage:  "show the sandbox's nodes, pods and leases",
				Flags:  []cli.Flag{dirFlag},
				Action: sandboxStatus,
			},
			{
				Name:  "matrix",
				Usage: "ping every pod from every other pod and show the latency",
				Flags: []cli.Flag{dirFlag, &cli.IntFlag{Name: "count", Value: 3, Usage: "pings per pair"}},
				Action: func(c *cli.Context) error {
					st, err := loadSandbox(c.String("dir"))
					if err != nil {
						return err
					}
					failed := sandbox.PrintMatrix(c.App.Writer, sandbox.Matrix(c.Context, st, c.Int("count")))
					if failed > 0 {
						return cli.Exit(fmt.Sprintf("%d pod pairs cannot reach each other", failed), 1)
					}
					fmt.Fprintln(c.App.Writer, "every pod reaches every other pod")
					if outside := sandbox.FromOutside(c.Context, st, c.Int("count")); outside != nil {
						fmt.Fprintf(c.App.Writer, "\nFrom the outside network, through the %s router (routes learned over BGP):\n", st.Routers[0].Kind)
						if failed := sandbox.PrintMatrix(c.App.Writer, outside); failed > 0 {
							return cli.Exit(fmt.Sprintf("%d pods cannot be reached from outside", failed), 1)
						}
						fmt.Fprintln(c.App.Writer, "the outside network reaches every pod")
					}
					return nil
				},
			},
			{
				Name:   "down",
				Usage:  "stop every process and delete every namespace the sandbox made",
				Flags:  []cli.Flag{dirFlag},
				Action: sandboxDown,
			},
		},
	}
}

func sandboxUp(c *cli.Context) error {
	dir := c.String("dir")
	if _, err := os.Stat(sandbox.StateFile(dir)); err == nil {
		return cli.Exit(fmt.Sprintf("a sandbox is already up in %s; run 'weftctl sandbox down --dir %s' first", dir, dir), 2)
	}
	if n := c.Int("nodes"); n < 1 || n > 250 {
		return cli.Exit(fmt.Sprintf("--nodes %d is out of range; use 1 to 250", n), 2)
	}
	if r := c.String("router"); r != "" && r != sandbox.BIRD && r != sandbox.FRR {
		return cli.Exit(fmt.Sprintf("--router %q is unknown; use bird or frr", r), 2)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	out := c.App.Writer
	cluster, err := sandbox.Up(c.Context, sandbox.Options{
		Name: c.String("name"), Dir: dir, BinDir: filepath.Dir(self),
		Nodes: c.Int("nodes"), Backend: c.String("backend"), IPMasq: c.Bool("ip-masq"),
		IPv6: c.Bool("ipv6"), NetConf: sandbox.NetConf(c.String("backend"), c.Bool("ipv6")),
		Router: c.String("router"), Kube: c.Bool("kube"),
		Detach: true,
		Log:    func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) },
	})
	if err != nil {
		var bad *subnet.ConfigError
		if errors.As(err, &bad) {
			return cli.Exit(err.Error(), 2)
		}
		return err
	}
	for _, n := range cluster.Nodes {
		for range c.Int("pods") {
			if _, err := cluster.AddPod(n); err != nil {
				cluster.Down()
				return err
			}
		}
	}
	st := cluster.State()
	if err := st.Save(); err != nil {
		cluster.Down()
		return err
	}
	fmt.Fprintln(out)
	printSandbox(out, st)
	if leases, err := cluster.Weftctl(c.Context, "leases"); err == nil {
		fmt.Fprintf(out, "\nLeases:\n%s", leases)
	}
	fmt.Fprintf(out, "\nTry:\n")
	if len(st.Nodes) > 1 && len(st.Nodes[0].Pods) > 0 && len(st.Nodes[1].Pods) > 0 {
		fmt.Fprintf(out, "  ip netns exec %s ping %s          # pod to pod across nodes\n", st.Nodes[0].Pods[0].NS, st.Nodes[1].Pods[0].IP)
	}
	if len(st.Nodes[0].Pods) > 0 {
		fmt.Fprintf(out, "  ip netns exec %s sh                # a shell in a pod\n", st.Nodes[0].Pods[0].NS)
	}
	fmt.Fprintf(out, "  ip netns exec %s %s status   # what weftd on node-1 is doing\n", st.Nodes[0].NS, self)
	fmt.Fprintf(out, "  %s sandbox matrix --dir %s    # every pod pings every pod\n", self, dir)
	fmt.Fprintf(out, "  %s sandbox status --dir %s\n", self, dir)
	fmt.Fprintf(out, "  %s sandbox down --dir %s      # remove everything\n", self, dir)
	return nil
}

func sandboxStatus(c *cli.Context) error {
	st, err := loadSandbox(c.String("dir"))
	if err != nil {
		return err
	}
	printSandbox(c.App.Writer, st)
	return nil
}

func sandboxDown(c *cli.Context) error {
	dir := c.String("dir")
	st, err := loadSandbox(dir)
	if err != nil {
		return err
	}
	st.Destroy()
	fmt.Fprintf(c.App.Writer, "sandbox %q removed: processes stopped, namespaces %s-* deleted, %s removed\n", st.Name, st.Name, dir)
	return nil
}

func loadSandbox(dir string) (sandbox.State, error) {
	st, err := sandbox.LoadState(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return st, cli.Exit(fmt.Sprintf("no sandbox in %s; start one with 'weftctl sandbox up'", dir), 1)
	}
	return st, err
}

func printSandbox(w io.Writer, st sandbox.State) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NODE\tNETNS\tIP\tSUBNET\tWEFTD\tPODS\n")
	for _, n := range st.Nodes {
		state := "running"
		if !sandbox.Running(n.WeftdPID) {
			state = "stopped"
		}
		var pods []string
		for _, p := range n.Pods {
			pods = append(pods, p.NS+"="+p.IP)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s (pid %d)\t%s\n", n.Name, n.NS, n.IP, n.Subnet, state, n.WeftdPID, strings.Join(pods, " "))
	}
	tw.Flush()
	etcd := "running"
	if !sandbox.Running(st.EtcdPID) {
		etcd = "stopped"
	}
	fmt.Fprintf(w, "etcd %s in %s: %s (pid %d); logs in %s\n", st.Etcd, st.Fabric, etcd, st.EtcdPID, st.Dir)
	for _, r := range st.Routers {
		fmt.Fprintf(w, "router %s in %s at %s (AS %d)", r.Kind, r.NS, r.IP, sandbox.RouterASN)
		if r.Outside != "" {
			fmt.Fprintf(w, "; outside network %s, client %s in %s", sandbox.OutsideNetwork, sandbox.OutsideClient, r.Outside)
		}
		fmt.Fprintln(w)
	}
}
