package main

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// report is everything one run measured.
type report struct {
	Started  time.Time
	Machine  string
	Cold     []coldResult
	Burst    burstResult
	Etcd     etcdResult
	DataPath []pathResult
	IPIP     *pathResult // measured in the VM; nil if skipped
	BGP      bgpResult   // zero if skipped
	Services *servicesResult
	Kube     []kubeResult
	Micro    string // go test -bench output
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func us(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func (r *report) markdown(pngPath string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# Benchmarks")
	p("")
	p("Written by `make bench` (`go run ./bench`) on %s.", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	p("Machine: %s. Every figure below is from that one run;", r.Machine)
	p("rerun `sudo make bench` to measure your machine (it rewrites this file and the plot).")
	p("")
	p("Where the time and memory go, and what was changed to get here: [performance.md](performance.md).")
	p("")
	p("Setup: a sandbox (network namespaces, a real etcd in the fabric namespace, syncing its")
	p("log to disk on every commit as a production etcd does; the tests skip that) holding")
	p("N generated leases of other nodes in flannel's vxlan format (`/26` subnets of")
	p("100.96.0.0/12); one node running weftd. Times are read from the kernel, not from")
	p("weftd: route events from a netlink subscription in the node's namespace (cold")
	p("start, bursts, latency); the cold start is confirmed by a dump of the routing table.")
	p("")
	p("## Cold start")
	p("")
	p("From starting weftd (etcd already holding N leases) until the kernel has a route")
	p("for every peer (each with its neighbour and FDB entry, installed before the route).")
	p("")
	p("| N | time to converge | target ≤ 1 s | weftd RSS: peak (binary's pages) / median |")
	p("|---|---|---|---|")
	for _, c := range r.Cold {
		p("| %d | %s | %s | %.1f MB (%.1f MB) / %.1f MB |", c.N, ms(c.Converge), verdict(c.Converge <= time.Second), c.RSSMB, c.RSSFileMB, c.RSSMedianMB)
	}
	p("")
	p("![cold start time against N](%s)", filepath.Base(pngPath))
	p("")
	if len(r.Cold) > 0 {
		last := r.Cold[len(r.Cold)-1]
		p("Memory: resident set of weftd with %d peers programmed, sampled every %v for %v after", last.N, rssEvery, rssWindow)
		p("converging (two periodic resyncs, which read the kernel): peak %.1f MB, median %.1f MB", last.RSSMB, last.RSSMedianMB)
		p("(target ≤ 30 MB: %s). %.1f MB of the peak are pages of the weftd binary that the kernel", verdict(last.RSSMB <= 30), last.RSSFileMB)
		p("maps from the page cache (file-backed, shared, reclaimable; about the binary's size on this")
		p("kernel, whatever N); the other %.1f MB are weftd's own (anonymous) memory, of which its", last.RSSMB-last.RSSFileMB)
		p("Go runtime reports (`/metrics`, after the window) a heap in use of %.1f MB with the next", last.Go.HeapInuse)
		p("collection due at %.1f MB (`--gc-percent`), %.1f MB of collector metadata and %.1f MB of", last.Go.NextGC, last.Go.GCSys, last.Go.StackSys)
		p("stacks; the rest is the runtime's own structures and heap pages not yet returned. In that")
		p("window weftd used %.1f%% of one core.", 100*last.CPU)
		p("")
	}
	if b := r.BGP; b.Cold != nil && len(r.Cold) > 0 {
		off := r.Cold[len(r.Cold)-1]
		p("## BGP")
		p("")
		p("The same cold start with the node's BGP speaker on (GoBGP, peering with a BIRD 2 router on")
		p("the fabric and advertising the node's pod subnet), beside the run without:")
		p("")
		p("| N = %d | time to converge | weftd RSS: peak (binary's pages) / median |", off.N)
		p("|---|---|---|")
		p("| BGP off | %s | %.1f MB (%.1f MB) / %.1f MB |", ms(off.Converge), off.RSSMB, off.RSSFileMB, off.RSSMedianMB)
		p("| BGP on | %s | %.1f MB (%.1f MB) / %.1f MB |", ms(b.Cold.Converge), b.Cold.RSSMB, b.Cold.RSSFileMB, b.Cold.RSSMedianMB)
		p("")
		p("50 nodes started at once, each peering with one BIRD: %.1f s from the start until the", b.Fifty.Seconds())
		p("router's kernel table holds all 50 pod subnets, each via its node.")
		p("")
		if b.VIPs > 0 {
			p("%d services with traffic policy Cluster written to etcd (in transactions of 100) while %d nodes", b.VIPCount, b.VIPNodes)
			p("peer with BIRD: %.2f s from the first write until the router's kernel holds every VIP as", b.VIPs.Seconds())
			p("one multipath route via all %d nodes.", b.VIPNodes)
			p("")
		}
	}
	if sv := r.Services; sv != nil {
		med, largest := medianMax(sv.Change)
		p("## Services")
		p("")
		p("One node, etcd holding %d services with %d endpoints each (one TCP port, traffic policy", sv.N, sv.Endpoints)
		p("Cluster): from starting weftd until its status reports them all programmed: **%s**", ms(sv.Cold))
		p("(target ≤ 1 s: %s), of which the proxy's one transaction into the kernel took %s.", verdict(sv.Cold <= time.Second), ms(sv.Sync))
		p("")
		p("One endpoint of one of those services changed, %d times, from writing the service to etcd", len(sv.Change))
		p("until the kernel announces the committed nftables transaction (a multicast listener in")
		p("the node's namespace): median **%s**, worst %s (target ≤ 20 ms median: %s). weftd's", ms(med), ms(largest), verdict(med <= 20*time.Millisecond))
		p("resident set afterwards: %.1f MB (%.1f MB of it the binary's pages).", sv.RSSMB, sv.RSSFB)
		p("")
		p("Cost of a new connection: TCP handshakes from a client namespace to the VIP of the")
		p("last-defined service, DNATed by the node in between to an endpoint namespace (3,000")
		p("connections after 200 to warm up). weft's table looks the VIP up in a verdict map; the")
		p("comparison is the same services as a linear chain of one DNAT rule each, typed in with")
		p("`nft` (kube-proxy's iptables layout), in the same run:")
		p("")
		p("| services | weft (verdict map): median / p90 | linear chain: median / p90 |")
		p("|---|---|---|")
		for _, pc := range sv.PerConn {
			p("| %d | %s / %s | %s / %s |", pc.Services, us(pc.Map), us(pc.MapP90), us(pc.Linear), us(pc.LinP90))
		}
		p("")
	}
	if len(r.Kube) > 0 {
		p("## Kubernetes mode")
		p("")
		p("The cold start with `--kube-subnet-mgr` against a real kube-apiserver (built from")
		p("k8s.io/kubernetes, tools/kube) holding N Node objects with podCIDRs and weft's")
		p("annotations: from starting weftd until the kernel has a route for every one.")
		p("")
		p("| N Nodes | time to converge | target ≤ 1 s |")
		p("|---|---|---|")
		for _, k := range r.Kube {
			p("| %d | %s | %s |", k.N, ms(k.Converge), verdict(k.Converge <= time.Second))
		}
		p("")
	}
	p("## Incremental")
	p("")
	p("With N = %d peers programmed:", r.Burst.N)
	p("")
	p("| change (%d times each) | time until the kernel reflects it: median | worst | target ≤ 20 ms (median) |", burstRounds)
	p("|---|---|---|---|")
	p("| 100 leases written in one etcd transaction | %s | %s | %s |", ms(r.Burst.Add), ms(r.Burst.AddMax), verdict(r.Burst.Add <= 20*time.Millisecond))
	p("| the same 100 deleted in one transaction | %s | %s | %s |", ms(r.Burst.Delete), ms(r.Burst.DeleteMax), verdict(r.Burst.Delete <= 20*time.Millisecond))
	p("")
	p("The time runs from sending the transaction; etcd took %s (median; worst %s) to commit", ms(r.Burst.Commit), ms(r.Burst.CommitMax))
	p("it. A burst that arrives while weftd reads the kernel (the periodic resync, every 5 s)")
	p("waits for that.")
	p("")
	p("Single lease, write → route in the kernel, %d samples: p50 %s, p99 %s, max %s.", r.Burst.Samples, ms(r.Burst.P50), ms(r.Burst.P99), ms(r.Burst.Max))
	p("")
	p("## etcd load")
	p("")
	p("Requests are etcd's `grpc_server_msg_received_total` (one per unary call, one per")
	p("message on a stream such as a keep-alive), read from etcd's `/metrics`.")
	p("")
	p("- Steady state, %d idle nodes for %v: **%.1f requests per node per hour**.", r.Etcd.Nodes, r.Etcd.Idle, r.Etcd.PerNodePerHour)
	var methods []string
	for m, v := range r.Etcd.ByMethod {
		methods = append(methods, fmt.Sprintf("%s %.0f", m, v))
	}
	sort.Strings(methods)
	if len(methods) > 0 {
		p("  In the window: %s.", strings.Join(methods, ", "))
	}
	p("- One node joining (start to ready, plus 2 s): **%.0f requests** in all.", r.Etcd.JoinRequests)
	p("")
	if len(r.DataPath) > 0 {
		p("## Data path")
		p("")
		p("iperf3 TCP, best of three 4 s runs, from a pod on node 1 to a pod on node 2, divided by")
		p("node 1 → node 2 over the underlay (veth pairs through the fabric bridge, so CPU-bound);")
		p("and the same for two nodes whose kernel state was typed in by hand with `ip` following")
		p("the same scheme, with the firewall state of a weft node typed in with `nft` (weftd's")
		p("forward rules, the CNI plugin's masquerade), measured in the same run. The hand-built")
		p("nodes are joined by a single veth pair rather than the fabric bridge, so compare the")
		p("ratios, not the absolute rates.")
		p("")
		p("| backend | pod→pod | node→node | weft ratio | by hand pod→pod | by hand node→node | by-hand ratio |")
		p("|---|---|---|---|---|---|---|")
		for _, d := range r.DataPath {
			p("| %s | %.2f Gbit/s | %.2f Gbit/s | %.2f | %.2f Gbit/s | %.2f Gbit/s | %.2f |", d.Backend, d.PodGbps, d.NodeGbps, d.Ratio(), d.HandPodGbps, d.HandNodeGbps, d.HandRatio())
		}
		p("")
		if d := r.IPIP; d != nil {
			p("ipip, measured the same way inside the QEMU VM of `e2e/vm/run.sh` (Debian's cloud")
			p("kernel, `-accel tcg`: every instruction emulated, so the rates are far below this")
			p("machine's; compare the ratios):")
			p("")
			p("| backend | pod→pod | node→node | weft ratio | by hand pod→pod | by hand node→node | by-hand ratio |")
			p("|---|---|---|---|---|---|---|")
			p("| ipip (VM) | %.3f Gbit/s | %.3f Gbit/s | %.2f | %.3f Gbit/s | %.3f Gbit/s | %.2f |", d.PodGbps, d.NodeGbps, d.Ratio(), d.HandPodGbps, d.HandNodeGbps, d.HandRatio())
		} else {
			p("ipip runs only in the VM (no IPIP in this kernel); it was skipped (`-skip-vm`).")
		}
		p("")
	}
	if r.Micro != "" {
		p("## Hot pure code")
		p("")
		p("`go test -run '^$' -bench . -benchmem ./subnet/ ./backend/... ./internal/kernel/`:")
		p("")
		p("```")
		for _, l := range strings.Split(strings.TrimSpace(r.Micro), "\n") {
			if strings.HasPrefix(l, "Benchmark") || strings.HasPrefix(l, "cpu:") {
				p("%s", l)
			}
		}
		p("```")
		p("")
	}
	return b.String()
}
