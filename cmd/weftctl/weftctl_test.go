package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/testenv"
)

type result struct {
	stdout, stderr string
	code           int
}

func weftctl(t *testing.T, endpoint, stdin string, args ...string) result {
	t.Helper()
	bin := testenv.Binary(t, "weftctl")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "WEFTCTL_ETCD_ENDPOINTS="+endpoint)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

func TestConfigSetGet(t *testing.T) {
	srv := testenv.StartEtcd(t)
	ep := srv.Endpoint()

	// Nothing there yet.
	r := weftctl(t, ep, "", "config", "get")
	if r.code != 1 || !strings.Contains(r.stderr, "no network configuration in etcd at /weft/network/config") {
		t.Fatalf("config get on empty etcd: %+v", r)
	}

	// A bad file writes nothing and exits 2 with the reason.
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"Network":"100.96.0.0/12","Backend":{"Type":"vxlam"}}`), 0o644)
	r = weftctl(t, ep, "", "config", "set", bad)
	want := `Backend.Type "vxlam" is unknown; use one of vxlan, host-gw, ipip; nothing was written`
	if r.code != 2 || !strings.Contains(r.stderr, want) {
		t.Fatalf("config set bad file: %+v, want exit 2 and %q", r, want)
	}
	if r := weftctl(t, ep, "", "config", "get"); r.code != 1 {
		t.Fatalf("a bad config set wrote something: %+v", r)
	}

	// A good one from stdin, with a warning for a key weft does not use.
	doc := `{"Network":"100.96.0.0/12","EnableNFTables":false,"Backend":{"Type":"host-gw"}}`
	r = weftctl(t, ep, doc, "config", "set", "-")
	if r.code != 0 || !strings.Contains(r.stdout, "wrote /weft/network/config") || !strings.Contains(r.stderr, `"EnableNFTables" is not used by weft`) {
		t.Fatalf("config set: %+v", r)
	}
	r = weftctl(t, ep, "", "config", "get")
	if r.code != 0 || strings.TrimSpace(r.stdout) != doc {
		t.Fatalf("config get: %+v", r)
	}

	// A switch and a network change are announced before they are written.
	r = weftctl(t, ep, `{"Network":"100.96.0.0/12","Backend":{"Type":"vxlan","VNI":4}}`, "config", "set", "-")
	if r.code != 0 || !strings.Contains(r.stderr, "this switches the backend from host-gw to vxlan (VNI 4): every weftd applies it live") {
		t.Errorf("switch warning: %+v", r)
	}
	r = weftctl(t, ep, `{"Network":"100.64.0.0/12","Backend":{"Type":"vxlan","VNI":4}}`, "config", "set", "-")
	if r.code != 0 || !strings.Contains(r.stderr, "the IPv4 network changes from 100.96.0.0/12 (/24 per node, 100.96.1.0 to 100.111.255.0) to 100.64.0.0/12") ||
		strings.Contains(r.stderr, "switches the backend") {
		t.Errorf("network change warning: %+v", r)
	}

	// Usage errors exit 2.
	if r := weftctl(t, ep, "", "config", "set"); r.code != 2 {
		t.Errorf("config set without FILE: %+v", r)
	}
	if r := weftctl(t, ep, "", "leases", "--bogus"); r.code != 2 {
		t.Errorf("unknown flag: %+v", r)
	}
}

func TestLeases(t *testing.T) {
	srv := testenv.StartEtcd(t)
	cli := srv.Client(t)
	ctx := context.Background()
	grant, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	cli.Put(ctx, "/weft/network/subnets/100.96.3.0-24",
		`{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:2f:9a:01:02:03"},"BackendV6Data":null,"Node":"node-3"}`,
		clientv3.WithLease(grant.ID))
	cli.Put(ctx, "/weft/network/subnets/100.96.4.0-24", `{"PublicIP":"198.18.0.4","BackendType":"host-gw"}`)
	cli.Put(ctx, "/weft/network/subnets/100.96.5.0-24", `garbage`)

	r := weftctl(t, srv.Endpoint(), "", "leases")
	if r.code != 0 {
		t.Fatalf("leases: %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "SUBNET") {
		t.Fatalf("leases table:\n%s", r.stdout)
	}
	row := strings.Fields(lines[1])
	if strings.Join(row[:5], " ") != "100.96.3.0/24 198.18.0.3 vxlan 6e:2f:9a:01:02:03 node-3" || !strings.HasSuffix(row[5], "s") {
		t.Errorf("row for node-3: %q", lines[1])
	}
	if !strings.Contains(lines[2], "100.96.4.0/24") || !strings.HasSuffix(lines[2], "none") {
		t.Errorf("row for the lease without TTL: %q", lines[2])
	}
	if !strings.Contains(r.stderr, "invalid lease 100.96.5.0-24") {
		t.Errorf("invalid lease not reported: %q", r.stderr)
	}

	r = weftctl(t, srv.Endpoint(), "", "leases", "-o", "json")
	var rows []leaseRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 3 {
		t.Fatalf("leases -o json: %v\n%s", err, r.stdout)
	}
	if rows[0].Node != "node-3" || rows[0].VtepMAC != "6e:2f:9a:01:02:03" || rows[0].TTLSeconds <= 0 || rows[0].TTLSeconds > 600 {
		t.Errorf("json row: %+v", rows[0])
	}
	if rows[2].Error == "" {
		t.Errorf("invalid lease has no error in json: %+v", rows[2])
	}

	if r := weftctl(t, srv.Endpoint(), "", "leases", "-o", "yaml"); r.code != 2 || !strings.Contains(r.stderr, `--output "yaml" is unknown`) {
		t.Errorf("bad -o: %+v", r)
	}
}
