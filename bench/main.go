// Command bench measures weft against its performance targets
// (docs/performance.md) and writes docs/benchmarks.md and
// docs/convergence.png. Run it as root with
// `make bench` (it builds namespaces); it is not part of make test.
//
//	fabric netns: etcd with N generated leases (vxlan format)
//	  └── node-1 netns: weftd, measured from the kernel:
//	        cold start  time from weftd's start until N routes exist
//	        burst       100 leases written in one transaction, then deleted
//	        latency     one lease, 200 times: write → route in the kernel
//	        memory      weftd's resident set with the peers programmed
//	        etcd load   etcd's request counters over an idle minute
//	        data path   iperf3 pod→pod / node→node, weft and by hand
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
)

func main() {
	binDir := flag.String("bin", "bin", "directory with weftd, weftctl, weft and weft-etcd")
	out := flag.String("out", "docs/benchmarks.md", "report to write")
	png := flag.String("png", "docs/convergence.png", "plot of cold start time against N")
	sizes := flag.String("sizes", "1000,5000,10000", "cluster sizes for the cold start")
	skipDataPath := flag.Bool("skip-data-path", false, "skip the iperf3 measurements")
	skipEtcd := flag.Bool("skip-etcd", false, "skip the etcd load measurement (2 minutes idle)")
	skipVM := flag.Bool("skip-vm", false, "skip the ipip data path, measured in a QEMU VM (e2e/vm/run.sh)")
	vmIPIP := flag.Bool("vm-ipip", false, "measure the ipip data path only and print it (what the VM runs)")
	skipBGP := flag.Bool("skip-bgp", false, "skip the BGP measurements (they need BIRD: Debian's bird2)")
	skipServices := flag.Bool("skip-services", false, "skip the service measurements")
	skipKube := flag.Bool("skip-kube", false, "skip the Kubernetes-mode cold start (it needs bin/kube-apiserver: make kube-bins)")
	micro := flag.String("micro", "", "output of the Go microbenchmarks to include in the report")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("bench needs root for network namespaces")
	}
	bin, err := filepath.Abs(*binDir)
	if err != nil {
		log.Fatal(err)
	}
	var ns []int
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 16000 {
			log.Fatalf("-sizes: %q is not a size from 1 to 16000", s)
		}
		ns = append(ns, n)
	}
	ctx := context.Background()
	if *vmIPIP {
		res, err := dataPath(ctx, bin, "ipip")
		if err != nil {
			log.Fatalf("ipip data path: %v", err)
		}
		js, _ := json.Marshal(res[0])
		fmt.Printf("%s%s\n", vmResultPrefix, js)
		return
	}
	r := &report{Started: time.Now(), Machine: machine()}
	if *micro != "" {
		b, err := os.ReadFile(*micro)
		if err != nil {
			log.Fatal(err)
		}
		r.Micro = string(b)
	}

	for _, n := range ns {
		res, err := coldStart(ctx, bin, n, "")
		if err != nil {
			log.Fatalf("cold start with %d peers: %v", n, err)
		}
		log.Printf("cold start N=%d: %v, RSS peak %.1f MB (file %.1f MB), median %.1f MB, CPU %.1f%%", n, res.Converge, res.RSSMB, res.RSSFileMB, res.RSSMedianMB, 100*res.CPU)
		r.Cold = append(r.Cold, res)
	}
	if !*skipBGP {
		last := ns[len(ns)-1]
		res, err := coldStart(ctx, bin, last, sandbox.BIRD)
		if err != nil {
			log.Fatalf("cold start with %d peers and BGP: %v", last, err)
		}
		log.Printf("cold start N=%d with BGP: %v, RSS peak %.1f MB (file %.1f MB), median %.1f MB", last, res.Converge, res.RSSMB, res.RSSFileMB, res.RSSMedianMB)
		r.BGP.Cold = &res
		if r.BGP.Fifty, err = fiftyNodesToBIRD(ctx, bin); err != nil {
			log.Fatalf("50 nodes peering with BIRD: %v", err)
		}
		log.Printf("50 nodes peering with BIRD: %v", r.BGP.Fifty)
		r.BGP.VIPCount, r.BGP.VIPNodes = 1000, 3
		if r.BGP.VIPs, err = vipsToBIRD(ctx, bin, r.BGP.VIPCount, r.BGP.VIPNodes); err != nil {
			log.Fatalf("%d VIPs from %d nodes to BIRD: %v", r.BGP.VIPCount, r.BGP.VIPNodes, err)
		}
		log.Printf("%d VIPs from %d nodes to BIRD: %v", r.BGP.VIPCount, r.BGP.VIPNodes, r.BGP.VIPs)
	}
	if !*skipServices {
		res, err := servicesBench(ctx, bin, 1000, 10)
		if err != nil {
			log.Fatalf("services: %v", err)
		}
		med, largest := medianMax(res.Change)
		log.Printf("services: %d x %d endpoints cold %v (sync %v); endpoint change median %v, max %v", res.N, res.Endpoints, res.Cold, res.Sync, med, largest)
		if res.PerConn, err = perConnection([]int{10, 1000, 10000}); err != nil {
			log.Fatalf("services, cost per connection: %v", err)
		}
		for _, pc := range res.PerConn {
			log.Printf("services: %d: new connection %v (verdict map), %v (linear chain)", pc.Services, pc.Map, pc.Linear)
		}
		r.Services = &res
	}
	if !*skipKube {
		for _, n := range []int{1000, 5000} {
			res, err := kubeColdStart(ctx, bin, n)
			if err != nil {
				log.Fatalf("Kubernetes mode, cold start with %d Nodes: %v", n, err)
			}
			log.Printf("Kubernetes mode, cold start with %d Nodes: %v", n, res.Converge)
			r.Kube = append(r.Kube, res)
		}
	}
	if r.Burst, err = burstAndLatency(ctx, bin, 5000); err != nil {
		log.Fatalf("burst: %v", err)
	}
	log.Printf("burst: %+v", r.Burst)
	if !*skipEtcd {
		if r.Etcd, err = etcdLoad(ctx, bin); err != nil {
			log.Fatalf("etcd load: %v", err)
		}
		log.Printf("etcd: %+v", r.Etcd)
	}
	if !*skipDataPath {
		if r.DataPath, err = dataPath(ctx, bin, "vxlan", "host-gw"); err != nil {
			log.Fatalf("data path: %v", err)
		}
		log.Printf("data path: %+v", r.DataPath)
		if !*skipVM {
			ipip, err := ipipInVM(ctx)
			if err != nil {
				log.Fatalf("ipip data path in the VM: %v", err)
			}
			r.IPIP = &ipip
			log.Printf("ipip data path in the VM: %+v", ipip)
		}
	}
	if err := writePlot(*png, r.Cold); err != nil {
		log.Fatalf("plot: %v", err)
	}
	if err := os.WriteFile(*out, []byte(r.markdown(*png)), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s and %s", *out, *png)
}

// cluster starts an empty sandbox (etcd only) for a measurement.
func cluster(ctx context.Context, bin, conf string) (*sandbox.Cluster, error) {
	return clusterWith(ctx, bin, conf, "")
}

// clusterWith is cluster with an upstream router (sandbox.BIRD or FRR; ""
// for none) that the nodes peer with over BGP.
func clusterWith(ctx context.Context, bin, conf, router string) (*sandbox.Cluster, error) {
	dir, err := os.MkdirTemp("", "weft-bench-")
	if err != nil {
		return nil, err
	}
	return sandbox.Up(ctx, sandbox.Options{
		Name: fmt.Sprintf("wb%d", os.Getpid()%100000), Dir: dir, BinDir: bin, NetConf: conf,
		ResyncInterval: 5 * time.Second, // weftd's default
		EtcdFsync:      true,            // as a production etcd
		Router:         router,
	})
}

// release stops a cluster and removes its directory (logs, etcd data).
func release(c *sandbox.Cluster) {
	dir := c.State().Dir
	c.Down()
	os.RemoveAll(dir)
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d × %s, Linux %s, %s", runtime.NumCPU(), cpu, strings.TrimSpace(string(kernel)), runtime.Version())
}
