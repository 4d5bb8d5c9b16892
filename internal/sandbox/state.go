package sandbox

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// State is what `weftctl sandbox up` records so that later commands can
// find a detached cluster again.
type State struct {
	Name    string        `json:"name"`
	Dir     string        `json:"dir"`
	Fabric  string        `json:"fabric"`
	Etcd    string        `json:"etcd"`
	EtcdPID int           `json:"etcdPID"`
	Nodes   []NodeState   `json:"nodes"`
	Routers []RouterState `json:"routers,omitempty"`
}

// RouterState records one upstream router.
type RouterState struct {
	Kind    string `json:"kind"`
	NS      string `json:"netns"`
	IP      string `json:"ip"`
	Outside string `json:"outside,omitempty"` // the client's namespace
	PIDs    []int  `json:"pids"`
}

// NodeState records one node.
type NodeState struct {
	Name     string     `json:"name"`
	NS       string     `json:"netns"`
	IP       string     `json:"ip"`
	Subnet   string     `json:"subnet"`
	WeftdPID int        `json:"weftdPID"`
	Pods     []PodState `json:"pods"`
}

// PodState records one pod.
type PodState struct {
	Name string `json:"name"`
	NS   string `json:"netns"`
	IP   string `json:"ip"`
}

// StateFile is where a cluster's State is kept inside its Dir.
func StateFile(dir string) string { return filepath.Join(dir, "state.json") }

// State describes the running cluster.
func (c *Cluster) State() State {
	s := State{Name: c.opts.Name, Dir: c.opts.Dir, Fabric: c.Fabric, Etcd: c.EtcdEndpoint()}
	if len(c.etcd) > 0 && c.etcd[0] != nil {
		s.EtcdPID = c.etcd[0].cmd.Process.Pid
	}
	for _, n := range c.Nodes {
		ns := NodeState{Name: n.Name, NS: n.NS, IP: n.IP.String()}
		if sn, err := n.Subnet(); err == nil {
			ns.Subnet = sn.String()
		}
		if n.weftd != nil {
			ns.WeftdPID = n.weftd.cmd.Process.Pid
		}
		for _, p := range n.Pods {
			ns.Pods = append(ns.Pods, PodState{Name: p.Name, NS: p.NS, IP: p.IP.String()})
		}
		s.Nodes = append(s.Nodes, ns)
	}
	for _, r := range c.Routers {
		s.Routers = append(s.Routers, RouterState{Kind: r.Kind, NS: r.NS, IP: r.IP.String(), Outside: r.Outside, PIDs: r.PIDs()})
	}
	return s
}

// Save writes the state file.
func (s State) Save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(StateFile(s.Dir), b, 0o644)
}

// LoadState reads the state file of the cluster in dir.
func LoadState(dir string) (State, error) {
	var s State
	b, err := os.ReadFile(StateFile(dir))
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", StateFile(dir), err)
	}
	return s, nil
}

// Running reports whether pid is still one of the sandbox's programs.
func Running(pid int) bool {
	if pid <= 0 {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	for _, prog := range []string{"weftd", "weft-etcd", "bird", "frr/zebra", "frr/bgpd"} {
		if strings.Contains(string(cmdline), prog) {
			return true
		}
	}
	return false
}

// Destroy stops the processes s records and deletes its namespaces and
// directory: the detached counterpart of Cluster.Down.
func (s State) Destroy() {
	var pids []int
	for _, n := range s.Nodes {
		pids = append(pids, n.WeftdPID)
	}
	for _, r := range s.Routers {
		pids = append(pids, r.PIDs...)
	}
	pids = append(pids, s.EtcdPID) // etcd last, as Down does
	for _, pid := range pids {
		if !Running(pid) {
			continue
		}
		syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for Running(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if Running(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	DeleteNamespaces(s.Name)
	os.RemoveAll(s.Dir)
}
