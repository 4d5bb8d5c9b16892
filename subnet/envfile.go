package subnet

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Env is the content of subnet.env, with flannel's variable names so that
// existing tooling (and flannel's CNI plugin) can read it.
type Env struct {
	Network     netip.Prefix // FLANNEL_NETWORK
	Subnet      netip.Prefix // FLANNEL_SUBNET: first host address and the subnet's length
	IPv6Network netip.Prefix // FLANNEL_IPV6_NETWORK
	IPv6Subnet  netip.Prefix // FLANNEL_IPV6_SUBNET
	MTU         int          // FLANNEL_MTU
	IPMasq      bool         // FLANNEL_IPMASQ
}

// GatewayPrefix returns sn's first host address with sn's length, the form
// FLANNEL_SUBNET uses ("100.96.3.1/24").
func GatewayPrefix(sn netip.Prefix) netip.Prefix {
	if !sn.IsValid() {
		return sn
	}
	return netip.PrefixFrom(sn.Masked().Addr().Next(), sn.Bits())
}

// Marshal renders the file's content.
func (e *Env) Marshal() []byte {
	var b bytes.Buffer
	for _, v := range []struct {
		name string
		p    netip.Prefix
	}{
		{"FLANNEL_NETWORK", e.Network},
		{"FLANNEL_SUBNET", e.Subnet},
		{"FLANNEL_IPV6_NETWORK", e.IPv6Network},
		{"FLANNEL_IPV6_SUBNET", e.IPv6Subnet},
	} {
		if v.p.IsValid() {
			fmt.Fprintf(&b, "%s=%s\n", v.name, v.p)
		}
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", e.IPMasq)
	return b.Bytes()
}

// WriteEnvFile writes e to path atomically: readers see the old file or the
// new one, never a part. The file is readable and writable by its owner and
// readable by its group only (mode 0640).
func WriteEnvFile(path string, e *Env) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("writing %s: it is a directory; the subnet file must be a file (--subnet-file)", path)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating directory for %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(e.Marshal()); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o640); err != nil {
		tmp.Close()
		return fmt.Errorf("setting mode of %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}

// ReadEnvFile reads a subnet.env written by weft or flannel. Unknown
// variables, comments and blank lines are ignored.
func ReadEnvFile(path string) (*Env, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseEnv(data)
}

// ParseEnv parses the content of a subnet.env file.
func ParseEnv(data []byte) (*Env, error) {
	e := &Env{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: %q is not NAME=VALUE", n, line)
		}
		val = strings.Trim(val, `"'`)
		var err error
		switch name {
		case "FLANNEL_NETWORK":
			e.Network, err = netip.ParsePrefix(val)
		case "FLANNEL_SUBNET":
			e.Subnet, err = netip.ParsePrefix(val)
		case "FLANNEL_IPV6_NETWORK":
			e.IPv6Network, err = netip.ParsePrefix(val)
		case "FLANNEL_IPV6_SUBNET":
			e.IPv6Subnet, err = netip.ParsePrefix(val)
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(val)
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(val)
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %s=%q: %w", n, name, val, err)
		}
	}
	return e, sc.Err()
}
