package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/weft-net/weft/internal/etcdflags"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcd"
	"github.com/weft-net/weft/subnet/kube"
)

func leasesCommand() *cli.Command {
	return &cli.Command{
		Name:  "leases",
		Usage: "list every node's subnet lease",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"},
			&cli.BoolFlag{Name: "kube-subnet-mgr", EnvVars: []string{"WEFTCTL_KUBE_SUBNET_MGR"}, Usage: "read the leases from the Kubernetes API's Node objects (weftd --kube-subnet-mgr) instead of etcd"},
			&cli.StringFlag{Name: "kubeconfig-file", EnvVars: []string{"WEFTCTL_KUBECONFIG_FILE", "KUBECONFIG"}, Usage: "kubeconfig for --kube-subnet-mgr (default: the pod's service account)", TakesFile: true},
			&cli.StringFlag{Name: "kube-api-url", EnvVars: []string{"WEFTCTL_KUBE_API_URL"}, Usage: "the API server's URL, overriding the kubeconfig's"},
			&cli.StringFlag{Name: "kube-annotation-prefix", Value: kube.DefaultPrefix, EnvVars: []string{"WEFTCTL_KUBE_ANNOTATION_PREFIX"}, Usage: "weftd's --kube-annotation-prefix"},
		},
		Action: func(c *cli.Context) error {
			format := c.String("output")
			if format != "table" && format != "json" {
				return cli.Exit(fmt.Sprintf("--output %q is unknown; use table or json", format), 2)
			}
			var rows []leaseRow
			if c.Bool("kube-subnet-mgr") {
				nodes, err := kube.NewClient(c.String("kubeconfig-file"), c.String("kube-api-url"), "weftctl")
				if err != nil {
					return cli.Exit(fmt.Sprintf("--kube-subnet-mgr: %v", err), 2)
				}
				listed, err := kube.New(nodes, kube.Options{Prefix: c.String("kube-annotation-prefix")}).List(c.Context)
				if err != nil {
					return err
				}
				for _, l := range listed {
					if !errors.Is(l.Err, kube.ErrNotALease) { // a Node without weft is no lease
						rows = append(rows, kubeLeaseRow(l))
					}
				}
			} else {
				store, closeStore, err := openStore(c)
				if err != nil {
					return err
				}
				defer closeStore()
				if rows, err = leaseRows(c.Context, store); err != nil {
					return err
				}
			}
			if format == "json" {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			printLeases(c.App.Writer, rows)
			return nil
		},
	}
}

// leaseRow is one lease as weftctl shows it; its JSON form is weftctl's
// output format.
type leaseRow struct {
	Key         string          `json:"key"`
	Subnet      string          `json:"subnet,omitempty"`
	IPv6Subnet  string          `json:"ipv6Subnet,omitempty"`
	PublicIP    string          `json:"publicIP,omitempty"`
	PublicIPv6  string          `json:"publicIPv6,omitempty"`
	BackendType string          `json:"backendType"`
	VtepMAC     string          `json:"vtepMAC,omitempty"`
	Node        string          `json:"node,omitempty"`
	TTLSeconds  int64           `json:"ttlSeconds"`
	EtcdLease   string          `json:"etcdLease,omitempty"`
	BackendData json.RawMessage `json:"backendData,omitempty"`
	Error       string          `json:"error,omitempty"`
}

func leaseRows(ctx context.Context, store *etcd.Store) ([]leaseRow, error) {
	listing, err := store.List(ctx)
	if err != nil {
		return nil, err
	}
	rows := make([]leaseRow, len(listing.Entries))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, e := range listing.Entries {
		rows[i] = newLeaseRow(e)
		if e.Lease == clientv3.NoLease {
			rows[i].TTLSeconds = -1 // no TTL: the key lives until deleted
			continue
		}
		g.Go(func() error {
			ttl, err := store.TTL(gctx, e.Lease)
			rows[i].TTLSeconds = int64(ttl / time.Second)
			return err
		})
	}
	return rows, g.Wait()
}

func newLeaseRow(e etcd.Entry) leaseRow {
	r := leaseRow{Key: e.Key}
	if e.Lease != clientv3.NoLease {
		r.EtcdLease = fmt.Sprintf("%x", int64(e.Lease))
	}
	if e.Err != nil {
		r.Error = e.Err.Error()
		return r
	}
	fillLeaseRow(&r, &e.Item)
	return r
}

func fillLeaseRow(r *leaseRow, l *subnet.Lease) {
	r.Subnet = orEmpty(l.Subnet)
	r.IPv6Subnet = orEmpty(l.IPv6Subnet)
	r.PublicIP = orEmpty(l.PublicIP)
	r.PublicIPv6 = orEmpty(l.PublicIPv6)
	r.BackendType = l.BackendType
	if mac := l.VtepMAC(); mac != nil {
		r.VtepMAC = mac.String()
	}
	r.Node = l.Node
	r.BackendData = l.BackendData
}

// kubeLeaseRow is a Node as a lease row: its key is the Node's name, and
// it has no TTL.
func kubeLeaseRow(l kube.Listed) leaseRow {
	r := leaseRow{Key: l.Node, TTLSeconds: -1}
	if l.Err != nil {
		r.Error = l.Err.Error()
		return r
	}
	fillLeaseRow(&r, &l.Lease)
	return r
}

func printLeases(w io.Writer, rows []leaseRow) {
	dual := false
	for _, r := range rows {
		dual = dual || r.IPv6Subnet != ""
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if dual {
		fmt.Fprintln(tw, "SUBNET\tIPV6 SUBNET\tPUBLIC IP\tPUBLIC IPV6\tBACKEND\tVTEP MAC\tNODE\tTTL")
	} else {
		fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tBACKEND\tVTEP MAC\tNODE\tTTL")
	}
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(os.Stderr, "weftctl: invalid lease %s: %s\n", r.Key, r.Error)
			continue
		}
		cols := []string{dash(r.Subnet)}
		if dual {
			cols = append(cols, dash(r.IPv6Subnet), dash(r.PublicIP), dash(r.PublicIPv6))
		} else {
			cols = append(cols, dash(r.PublicIP))
		}
		cols = append(cols, dash(r.BackendType), dash(r.VtepMAC), dash(r.Node), ttlString(r.TTLSeconds))
		for i, col := range cols {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, col)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

func ttlString(s int64) string {
	switch {
	case s < 0:
		return "none"
	case s == 0:
		return "expired"
	}
	return (time.Duration(s) * time.Second).String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// orEmpty formats an address or prefix, or "" when it is absent.
func orEmpty(v interface {
	IsValid() bool
	String() string
}) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}

// diagnose, once a command has connected to etcd, says why etcd could not
// be used if a command fails (see etcd.Probe).
var diagnose func() error

// openStore connects to etcd as the global flags say.
func openStore(c *cli.Context) (*etcd.Store, func(), error) {
	cfg := etcdflags.ClientConfig(c)
	cli, err := etcd.NewClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	diagnose = func() error { return etcd.Probe(context.Background(), cfg) }
	store := etcd.New(cli, etcd.Options{Prefix: c.String("etcd-prefix"), Timeout: 5 * time.Second})
	return store, func() { cli.Close() }, nil
}
