package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/internal/status"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show what the weftd on this node is doing (from its --healthz-addr)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "healthz-addr", Value: "127.0.0.1:8285", EnvVars: []string{"WEFTCTL_HEALTHZ_ADDR"}, Usage: "weftd's --healthz-addr"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"},
		},
		Action: func(c *cli.Context) error {
			format := c.String("output")
			if format != "table" && format != "json" {
				return cli.Exit(fmt.Sprintf("--output %q is unknown; use table or json", format), 2)
			}
			st, err := fetchStatus(c.Context, c.String("healthz-addr"))
			if err != nil {
				return err
			}
			if format == "json" {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
			} else {
				printStatus(c.App.Writer, st, time.Now())
			}
			if !st.Ready { // in either form: probes and scripts rely on it
				return cli.Exit("", 1)
			}
			return nil
		},
	}
}

func fetchStatus(ctx context.Context, addr string) (*status.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking weftd at %s (is it running, with --healthz-addr %s?): %w", addr, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("weftd at %s answered %s: %s", addr, resp.Status, body)
	}
	var st status.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("decoding weftd's status: %w", err)
	}
	return &st, nil
}

func printStatus(w io.Writer, st *status.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	ready := "yes"
	if !st.Ready {
		ready = "no: " + st.NotReady
	}
	row("NODE", st.Node)
	row("READY", ready)
	row("BACKEND", fmt.Sprintf("%s (interface %s, pod MTU %d)", dash(st.Backend), dash(st.Interface), st.MTU))
	if st.ConfigIssue != "" {
		row("CONFIG PROBLEM", st.ConfigIssue)
	}
	row("SUBNET", dash(st.Subnet))
	if st.IPv6Subnet != "" {
		row("IPV6 SUBNET", st.IPv6Subnet)
	}
	row("PUBLIC IP", dash(st.PublicIP))
	if st.PublicIPv6 != "" {
		row("PUBLIC IPV6", st.PublicIPv6)
	}
	lease := (time.Duration(st.LeaseTTL) * time.Second).String()
	if st.LeaseTTL < 0 {
		lease = "none (the subnet is the Node's podCIDR)"
	}
	if st.LeaseIssue != "" {
		lease += " PROBLEM: " + st.LeaseIssue
	}
	row("LEASE TTL", lease)
	row("PEERS", fmt.Sprintf("%d known, %d programmed, %d other backend, %d unreachable",
		st.Peers.Known, st.Peers.Programmed, st.Peers.OtherType, st.Peers.Unreachable))
	if st.Peers.Direct > 0 {
		row("DIRECT ROUTING", fmt.Sprintf("%d direct, %d encapsulated", st.Peers.Direct, st.Peers.Programmed-st.Peers.Direct))
	}
	last := "never"
	if !st.LastSync.IsZero() {
		last = now.Sub(st.LastSync).Round(time.Millisecond).String() + " ago"
	}
	if st.LastSyncErr != "" {
		last += " (failed: " + st.LastSyncErr + ")"
	}
	row("LAST SYNC", last)
	row("SYNC ERRORS", fmt.Sprint(st.SyncErrors))
	row("WATCH RESTARTS", fmt.Sprint(st.Restarts))
	if st.BGP != nil {
		row("BGP", fmt.Sprintf("AS %d, router ID %s, %d routes advertised", st.BGP.ASN, st.BGP.RouterID, len(st.BGP.Advertised)))
	}
	if sv := st.Services; sv != nil {
		switch {
		case !sv.Enabled:
			row("SERVICES", "off (no ServiceNetwork in the network configuration)")
		default:
			last := "never"
			if !sv.LastChange.IsZero() {
				last = now.Sub(sv.LastChange).Round(time.Second).String() + " ago"
			}
			row("SERVICES", fmt.Sprintf("%d programmed (%d endpoints), %d refused; last change %s", sv.Programmed, sv.Endpoints, len(sv.Refused), last))
			if sv.LastError != "" {
				row("SERVICE ERROR", sv.LastError)
			}
		}
	}
	tw.Flush()
	if st.BGP != nil {
		printBGP(w, st.BGP, now)
	}
	if st.Services != nil && len(st.Services.Refused) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(tw, "REFUSED SERVICE\tPROBLEM\n")
		for _, r := range st.Services.Refused {
			fmt.Fprintf(tw, "%s\t%s\n", r.Service, r.Problem)
		}
		tw.Flush()
	}
}

// printBGP lists the BGP sessions and the routes the node advertises.
func printBGP(w io.Writer, b *status.BGP, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w)
	fmt.Fprintf(tw, "BGP PEER\tAS\tSTATE\tFOR\tSENT\tRECEIVED\tPROBLEM\n")
	for _, p := range b.Peers {
		since := "-"
		if !p.Since.IsZero() {
			since = now.Sub(p.Since).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%s\n", p.Address, p.ASN, p.State, since, p.PrefixesSent, p.PrefixesReceived, dash(p.Problem))
	}
	tw.Flush()
	if len(b.Advertised) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(tw, "ADVERTISED\tNEXT HOP\tWHY\n")
		for _, r := range b.Advertised {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Prefix, r.NextHop, r.Why)
		}
		tw.Flush()
	}
}
