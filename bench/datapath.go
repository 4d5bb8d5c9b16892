package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
)

// pathResult compares pod-to-pod with node-to-node TCP throughput.
type pathResult struct {
	Backend      string
	PodGbps      float64
	NodeGbps     float64
	HandPodGbps  float64 // the same topology programmed by hand with ip
	HandNodeGbps float64
}

func (p pathResult) Ratio() float64     { return p.PodGbps / p.NodeGbps }
func (p pathResult) HandRatio() float64 { return p.HandPodGbps / p.HandNodeGbps }

// iperf measures TCP throughput from namespace from to addr (a server runs
// in namespace to), best of three 4-second runs.
func iperf(from, to, addr string) (float64, error) {
	best := 0.0
	for range 3 {
		srv := exec.Command("ip", "netns", "exec", to, "iperf3", "-s", "-1", "-B", addr)
		if err := srv.Start(); err != nil {
			return 0, err
		}
		time.Sleep(300 * time.Millisecond)
		out, err := exec.Command("ip", "netns", "exec", from, "iperf3", "-c", addr, "-t", "4", "-J").Output()
		srv.Wait()
		if err != nil {
			return 0, fmt.Errorf("iperf3 -c %s from %s: %v: %s", addr, from, err, out)
		}
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			return 0, err
		}
		best = max(best, r.End.SumReceived.BitsPerSecond/1e9)
	}
	return best, nil
}

// dataPath measures the backends' data path against hand-programmed
// state.
func dataPath(ctx context.Context, bin string, backends ...string) ([]pathResult, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, fmt.Errorf("iperf3 is not installed (apt-get install iperf3)")
	}
	var out []pathResult
	for _, b := range backends {
		r := pathResult{Backend: b}
		c, err := cluster(ctx, bin, sandbox.NetConf(b, false))
		if err != nil {
			return nil, err
		}
		err = func() error {
			defer release(c)
			for range 2 {
				n, err := c.AddNode(ctx)
				if err != nil {
					return err
				}
				if _, err := c.AddPod(n); err != nil {
					return err
				}
			}
			time.Sleep(time.Second)
			p1, p2 := c.Nodes[0].Pods[0], c.Nodes[1].Pods[0]
			if r.PodGbps, err = iperf(p1.NS, p2.NS, p2.IP.String()); err != nil {
				return err
			}
			r.NodeGbps, err = iperf(c.Nodes[0].NS, c.Nodes[1].NS, c.Nodes[1].IP.String())
			return err
		}()
		if err != nil {
			return nil, err
		}
		if r.HandPodGbps, r.HandNodeGbps, err = byHand(b); err != nil {
			return nil, fmt.Errorf("hand-programmed %s: %w", b, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// byHand builds two nodes with a pod each and programs the backend's
// kernel state with ip and nft commands, as an operator following flannel's
// scheme would, then measures the same two paths.
func byHand(backend string) (pod, node float64, err error) {
	const p = "wbh"
	ns := []string{p + "-n1", p + "-n2", p + "-p1", p + "-p2"}
	defer func() {
		for _, n := range ns {
			exec.Command("ip", "netns", "del", n).Run()
		}
	}()
	mtu := map[string]string{"vxlan": "1450", "ipip": "1480", "host-gw": "1500"}[backend]
	cmds := [][]string{}
	for _, n := range ns {
		cmds = append(cmds, []string{"ip", "netns", "add", n}, []string{"ip", "-n", n, "link", "set", "lo", "up"})
	}
	cmds = append(cmds,
		[]string{"ip", "-n", ns[0], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns[1]},
		[]string{"ip", "-n", ns[0], "addr", "add", "198.18.9.1/24", "dev", "eth0"},
		[]string{"ip", "-n", ns[1], "addr", "add", "198.18.9.2/24", "dev", "eth0"},
		[]string{"ip", "-n", ns[0], "link", "set", "eth0", "up"},
		[]string{"ip", "-n", ns[1], "link", "set", "eth0", "up"},
	)
	for i := range 2 {
		node, pod := ns[i], ns[2+i]
		sub := fmt.Sprintf("100.96.%d", 240+i)
		cmds = append(cmds,
			[]string{"ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
			[]string{"ip", "-n", node, "link", "add", "cni0", "type", "bridge"},
			[]string{"ip", "-n", node, "link", "set", "cni0", "mtu", mtu},
			[]string{"ip", "-n", node, "addr", "add", sub + ".1/24", "dev", "cni0"},
			[]string{"ip", "-n", node, "link", "set", "cni0", "up"},
			[]string{"ip", "-n", node, "link", "add", "vp", "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", pod},
			[]string{"ip", "-n", node, "link", "set", "vp", "master", "cni0", "up"},
			[]string{"ip", "-n", pod, "addr", "add", sub + ".2/24", "dev", "eth0"},
			[]string{"ip", "-n", pod, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", pod, "route", "add", "default", "via", sub + ".1"},
		)
	}
	// The firewall state a weft node has: weftd's forward rules for the
	// pod network, and the CNI plugin's masquerade of the pod's traffic
	// leaving it (its NAT chain turns on connection tracking).
	for i := range 2 {
		node, pod := ns[i], fmt.Sprintf("100.96.%d.2", 240+i)
		cmds = append(cmds,
			[]string{"ip", "netns", "exec", node, "nft", "add table inet weft"},
			[]string{"ip", "netns", "exec", node, "nft", "add chain inet weft forward { type filter hook forward priority 0; policy accept; }"},
			[]string{"ip", "netns", "exec", node, "nft", "add rule inet weft forward ip saddr 100.96.0.0/12 accept"},
			[]string{"ip", "netns", "exec", node, "nft", "add rule inet weft forward ip daddr 100.96.0.0/12 accept"},
			[]string{"ip", "netns", "exec", node, "nft", "add table inet weft-cni"},
			[]string{"ip", "netns", "exec", node, "nft", "add chain inet weft-cni postrouting { type nat hook postrouting priority 100; policy accept; }"},
			[]string{"ip", "netns", "exec", node, "nft", "add rule inet weft-cni postrouting ip saddr " + pod + " ip daddr != 100.96.0.0/12 masquerade fully-random"},
		)
	}
	for i := range 2 {
		node, peer := ns[i], 1-i
		peerSub := fmt.Sprintf("100.96.%d", 240+peer)
		peerIP := fmt.Sprintf("198.18.9.%d", peer+1)
		switch backend {
		case "host-gw":
			cmds = append(cmds, []string{"ip", "-n", node, "route", "add", peerSub + ".0/24", "via", peerIP})
			continue
		case "ipip":
			cmds = append(cmds,
				[]string{"ip", "-n", node, "link", "add", "weft.ipip", "type", "ipip", "local", fmt.Sprintf("198.18.9.%d", i+1), "dev", "eth0"},
				[]string{"ip", "-n", node, "link", "set", "weft.ipip", "mtu", "1480", "up"},
				[]string{"ip", "-n", node, "addr", "add", fmt.Sprintf("100.96.%d.0/32", 240+i), "dev", "weft.ipip"},
				[]string{"ip", "-n", node, "route", "add", peerSub + ".0/24", "via", peerIP, "dev", "weft.ipip", "onlink"},
			)
			continue
		}
		mac := fmt.Sprintf("0e:00:00:00:00:%02x", 10+i)
		peerMAC := fmt.Sprintf("0e:00:00:00:00:%02x", 10+peer)
		cmds = append(cmds,
			[]string{"ip", "-n", node, "link", "add", "weft.1", "address", mac, "type", "vxlan", "id", "1", "local", fmt.Sprintf("198.18.9.%d", i+1), "dev", "eth0", "dstport", "8472", "nolearning"},
			[]string{"ip", "-n", node, "link", "set", "weft.1", "mtu", "1450", "up"},
			[]string{"ip", "-n", node, "addr", "add", fmt.Sprintf("100.96.%d.0/32", 240+i), "dev", "weft.1"},
			[]string{"ip", "-n", node, "neigh", "add", peerSub + ".0", "lladdr", peerMAC, "dev", "weft.1", "nud", "permanent"},
			[]string{"bridge", "-n", node, "fdb", "append", peerMAC, "dev", "weft.1", "dst", peerIP, "self", "permanent"},
			[]string{"ip", "-n", node, "route", "add", peerSub + ".0/24", "via", peerSub + ".0", "dev", "weft.1", "onlink"},
		)
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	if pod, err = iperf(ns[2], ns[3], "100.96.241.2"); err != nil {
		return 0, 0, err
	}
	node, err = iperf(ns[0], ns[1], "198.18.9.2")
	return pod, node, err
}

// ipipInVM runs the ipip data-path measurement in the QEMU VM of
// e2e/vm/run.sh (this kernel has no IPIP), where the bench runs with
// -vm-ipip and prints its result on the console.
func ipipInVM(ctx context.Context) (pathResult, error) {
	cmd := exec.CommandContext(ctx, "e2e/vm/run.sh")
	cmd.Env = append(os.Environ(), "WEFT_VM_BENCH=1")
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if _, js, ok := strings.Cut(l, vmResultPrefix); ok {
			var r pathResult
			return r, json.Unmarshal([]byte(strings.TrimSpace(js)), &r)
		}
	}
	tail := string(out)
	if len(tail) > 2000 {
		tail = tail[len(tail)-2000:]
	}
	return pathResult{}, fmt.Errorf("the VM printed no result (%v):\n%s", err, tail)
}

// vmResultPrefix marks the line with the VM's result on its console.
const vmResultPrefix = "WEFT-BENCH-IPIP "
