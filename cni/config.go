// Package cni is weft's CNI plugin: it wires a container into this node's
// subnet (from weftd's subnet.env) on the bridge cni0 with a veth pair,
// allocates its addresses in host-local's on-disk format, and needs no
// other plugin binary.
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/subnet"
)

// Defaults for the options of the plugin's configuration.
const (
	DefaultSubnetFile = "/run/weft/subnet.env"
	DefaultBridge     = "cni0"
	DefaultDataDir    = "/var/lib/cni/networks"
)

// NetConf is the plugin's network configuration. Only cniVersion, name and
// type are required: {"cniVersion":"1.0.0","name":"weft","type":"weft"}.
type NetConf struct {
	types.NetConf
	// SubnetFile is weftd's subnet.env.
	SubnetFile string `json:"subnetFile,omitempty"`
	// Bridge is the node bridge containers attach to.
	Bridge string `json:"bridge,omitempty"`
	// DataDir holds the address allocations (host-local's format):
	// <dataDir>/<name>/<ip> contains "<containerID>\r\n<ifname>".
	DataDir string `json:"dataDir,omitempty"`
	// IPMasq masquerades the container's traffic leaving the pod network;
	// default: on when weftd does not (FLANNEL_IPMASQ=false), as flannel's
	// plugin does.
	IPMasq *bool `json:"ipMasq,omitempty"`
	// HairpinMode lets a container reach itself through a service address;
	// default true.
	HairpinMode *bool `json:"hairpinMode,omitempty"`
	// MTU overrides FLANNEL_MTU.
	MTU int `json:"mtu,omitempty"`
}

// LoadConf parses the plugin's stdin and fills in defaults.
func LoadConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, fmt.Errorf("network configuration is not valid JSON: %w", err)
	}
	if conf.Name == "" {
		return nil, errors.New(`network configuration has no "name"`)
	}
	if conf.SubnetFile == "" {
		conf.SubnetFile = DefaultSubnetFile
	}
	if conf.Bridge == "" {
		conf.Bridge = DefaultBridge
	}
	if len(conf.Bridge) > 15 {
		return nil, fmt.Errorf(`"bridge" %q is longer than the 15 characters an interface name may have`, conf.Bridge)
	}
	if conf.DataDir == "" {
		conf.DataDir = DefaultDataDir
	}
	if conf.MTU != 0 && (conf.MTU < 576 || conf.MTU > 65535) {
		return nil, fmt.Errorf(`"mtu" %d is out of range; use 576 to 65535, or leave it out to use FLANNEL_MTU`, conf.MTU)
	}
	return conf, nil
}

func (c *NetConf) hairpin() bool { return c.HairpinMode == nil || *c.HairpinMode }

// ipMasq says whether the plugin masquerades, given weftd's setting.
func (c *NetConf) ipMasq(env *subnet.Env) bool {
	if c.IPMasq != nil {
		return *c.IPMasq
	}
	return !env.IPMasq
}

// readEnv reads subnet.env with an error that says what to do.
func (c *NetConf) readEnv() (*subnet.Env, error) {
	env, err := subnet.ReadEnvFile(c.SubnetFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist: is weftd running on this node (and is subnetFile right)?", c.SubnetFile)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", c.SubnetFile, err)
	}
	if !env.Subnet.IsValid() && !env.IPv6Subnet.IsValid() {
		return nil, fmt.Errorf("%s has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET", c.SubnetFile)
	}
	return env, nil
}

func (c *NetConf) mtu(env *subnet.Env) int {
	if c.MTU != 0 {
		return c.MTU
	}
	if env.MTU > 0 {
		return env.MTU
	}
	return 1500
}
