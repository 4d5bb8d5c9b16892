package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

// weftd runs the built weftd inside namespace ns with env added to its
// environment, for at most timeout.
func weftd(t *testing.T, ns string, env []string, timeout time.Duration, args ...string) (stderr string, code int, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, testenv.Binary(t, "weftd")}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var errb bytes.Buffer
	cmd.Stderr, cmd.Stdout = &errb, &errb
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return errb.String(), code, took
}

func TestInvalidFlagsAndConfigExit2(t *testing.T) {
	// In a namespace of its own, so that a case that wrongly starts the
	// daemon cannot touch this machine's network.
	n := testenv.NewNetNS(t)
	dir := t.TempDir()
	badConf := filepath.Join(dir, "bad.json")
	os.WriteFile(badConf, []byte(`{"Network":"100.96.0.0/12","Backend":{"Type":"vxlam"}}`), 0o644)
	noNetwork := filepath.Join(dir, "empty.json")
	os.WriteFile(noNetwork, []byte(`{}`), 0o644)
	badBGP := filepath.Join(dir, "bgp.json")
	os.WriteFile(badBGP, []byte(`{"Network":"100.96.0.0/12","BGP":{"ASN":0}}`), 0o644)
	goodConf := filepath.Join(dir, "good.json")
	os.WriteFile(goodConf, []byte(`{"Network":"100.96.0.0/12"}`), 0o644)
	emptyPassword := filepath.Join(dir, "password")
	os.WriteFile(emptyPassword, nil, 0o600)
	base := []string{"--healthz-addr", "", "--etcd-endpoints", "http://198.18.0.254:2379"}

	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"unknown flag", []string{"--bogus"}, nil, "flag provided but not defined: -bogus"},
		{"extra argument", []string{"start"}, nil, `unexpected argument "start"`},
		{"log level", []string{"--log-level", "loud"}, nil, `--log-level "loud" is unknown`},
		{"log format", []string{"--log-format", "xml"}, nil, `--log-format "xml" is unknown; use text or json`},
		{"log format from env", nil, []string{"WEFTD_LOG_FORMAT=xml"}, `--log-format "xml" is unknown`},
		{"public ip", []string{"--public-ip", "banana"}, nil, `--public-ip "banana" is not an IP address`},
		{"public ip family", []string{"--public-ip", "fd18::1"}, nil, "--public-ip fd18::1 is not an IPv4 address"},
		{"public ipv6 family", []string{"--public-ipv6", "198.18.0.1"}, nil, "--public-ipv6 198.18.0.1 is not an IPv6 address"},
		{"iface-can-reach", []string{"--iface-can-reach", "nowhere"}, nil, `--iface-can-reach "nowhere" is not an IP address`},
		{"iface regex", []string{"--iface-regex", "eth["}, nil, `--iface-regex "eth[" is not a regular expression`},
		{"endpoint without scheme", []string{"--etcd-endpoints", "198.18.0.254:2379"}, nil, `--etcd-endpoints "198.18.0.254:2379" is not a URL`},
		{"prefix from env", nil, []string{"WEFTD_ETCD_PREFIX=weft"}, `--etcd-prefix "weft" must start with /`},
		{"cert without key", []string{"--etcd-certfile", "/c.pem"}, nil, "--etcd-certfile and --etcd-keyfile go together"},
		{"missing CA", []string{"--etcd-cafile", "/nonexistent/ca.pem"}, nil, "loading etcd TLS files"},
		{"prefix", []string{"--etcd-prefix", "weft"}, nil, `--etcd-prefix "weft" must start with /`},
		{"lease ttl", []string{"--lease-ttl", "1s"}, nil, "--lease-ttl 1s is too short"},
		{"resync", []string{"--resync-interval", "0s"}, nil, "--resync-interval 0s must be positive"},
		{"gc percent", []string{"--gc-percent", "0"}, nil, "--gc-percent 0 must be from 10 to 1000"},
		{"subnet file", []string{"--subnet-file", ""}, nil, "--subnet-file is empty"},
		{"node name", []string{"--node-name", ""}, nil, "--node-name is empty"},
		{"healthz addr", []string{"--healthz-addr", "127.0.0.1:99999"}, nil, "--healthz-addr 127.0.0.1:99999"},
		{"config file missing", []string{"--net-config-path", "/nonexistent/net-conf.json"}, nil, "--net-config-path: open /nonexistent/net-conf.json"},
		{"bad backend", []string{"--net-config-path", badConf}, nil, `Backend.Type "vxlam" is unknown; use one of vxlan, host-gw, ipip`},
		{"no network", []string{"--net-config-path", noNetwork}, nil, "Network is missing"},
		{"duration", []string{"--lease-ttl", "forever"}, nil, `invalid value "forever" for flag -lease-ttl`},
		{"bgp config", []string{"--net-config-path", badBGP}, nil, "BGP.ASN 0 is out of range; use 1 to 4294967295"},
		{"bgp peer address", []string{"--bgp-peer-address", "198.18.0.300", "--bgp-peer-asn", "64500"}, nil, `--bgp-peer-address "198.18.0.300" is not an IP address`},
		{"bgp peer without asn", []string{"--bgp-peer-address", "198.18.0.253"}, nil, "--bgp-peer-asn is missing; give the AS number of each --bgp-peer-address"},
		{"bgp peer asn", []string{"--bgp-peer-address", "198.18.0.253", "--bgp-peer-asn", "0"}, nil, "--bgp-peer-asn 0 is out of range; use 1 to 4294967295"},
		{"bgp peer asn from env", nil, []string{"WEFTD_BGP_PEER_ADDRESS=198.18.0.253", "WEFTD_BGP_PEER_ASN=4294967296"}, "--bgp-peer-asn 4294967296 is out of range"},
		{"bgp peer asns", []string{"--bgp-peer-address", "198.18.0.253,198.18.0.252,198.18.0.251", "--bgp-peer-asn", "64500,64501"}, nil, "--bgp-peer-asn has 2 values for 3 --bgp-peer-address"},
		{"bgp peer port", []string{"--bgp-peer-address", "198.18.0.253", "--bgp-peer-asn", "64500", "--bgp-peer-port", "0"}, nil, `--bgp-peer-port "0" is out of range`},
		{"bgp asn", []string{"--bgp-asn", "23456"}, nil, "--bgp-asn 23456 is AS_TRANS"},
		{"bgp password on the command line", []string{"--bgp-password", "s3cret"}, nil, "--bgp-password on the command line is visible to every user of the node (ps); give it as WEFTD_BGP_PASSWORD or in --bgp-password-file"},
		{"bgp password file", []string{"--bgp-password-file", "/nonexistent/pw"}, nil, "--bgp-password-file: open /nonexistent/pw"},
		{"bgp empty password file", []string{"--bgp-password-file", emptyPassword}, nil, "--bgp-password-file " + emptyPassword + " is empty"},
		{"bgp router id", []string{"--bgp-router-id", "fd18::1"}, nil, "--bgp-router-id fd18::1 is not an IPv4 address"},
		{"bgp listen port", []string{"--bgp-listen-port", "70000"}, nil, "--bgp-listen-port 70000 is out of range"},
		{"kube without config file", []string{"--kube-subnet-mgr"}, nil, "--kube-subnet-mgr reads net-conf.json from a file: give --net-config-path"},
		{"kube annotation prefix", []string{"--kube-subnet-mgr", "--net-config-path", "/x.json", "--kube-annotation-prefix", "Weft/Net"}, nil, `--kube-annotation-prefix "Weft/Net" is not a DNS subdomain`},
		{"kube outside a pod", []string{"--kube-subnet-mgr", "--net-config-path", goodConf}, nil, "--kube-subnet-mgr: not in a pod, so a kubeconfig is needed (--kubeconfig-file)"},
		{"kubeconfig missing", []string{"--kube-subnet-mgr", "--net-config-path", goodConf, "--kubeconfig-file", "/nonexistent/kubeconfig"}, nil, "--kube-subnet-mgr: kubeconfig /nonexistent/kubeconfig"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stderr, code, took := weftd(t, n.Name, tt.env, 10*time.Second, append(append([]string{}, base...), tt.args...)...)
			if code != 2 {
				t.Errorf("exit status %d, want 2; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr lacks %q:\n%s", tt.want, stderr)
			}
			// One line naming the problem, after at most the banner with
			// weftd's version (logged before the configuration is read).
			var lines []string
			for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
				if !strings.Contains(l, `msg="starting weftd"`) {
					lines = append(lines, l)
				}
			}
			if len(lines) != 1 {
				t.Errorf("want one line, got %d:\n%s", len(lines), stderr)
			}
			if took > 2*time.Second {
				t.Errorf("took %v, want under 2s", took)
			}
		})
	}
	// Nothing was made in the namespace.
	if out, _ := exec.Command("ip", "-n", n.Name, "-o", "link").CombinedOutput(); strings.Count(string(out), "\n") != 1 {
		t.Errorf("a failed start left devices behind:\n%s", out)
	}
}

func TestWaitsForUnreachableEtcdAndSaysSo(t *testing.T) {
	n := testenv.NewNetNS(t)
	n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	stderr, code, _ := weftd(t, n.Name, []string{"WEFTD_ETCD_ENDPOINTS=http://198.18.0.254:2379"}, 12*time.Second,
		"--healthz-addr", "", "--iface", "eth0", "--subnet-file", filepath.Join(t.TempDir(), "subnet.env"))
	if code != -1 { // killed by the timeout: it kept waiting
		t.Errorf("weftd exited with %d instead of waiting for etcd:\n%s", code, stderr)
	}
	waits := strings.Count(stderr, "waiting for the network configuration in etcd")
	if waits < 2 || !strings.Contains(stderr, "198.18.0.254:2379") {
		t.Errorf("want repeated messages naming the endpoint, got %d:\n%s", waits, stderr)
	}
}

func TestIPIPWithoutKernelSupportSaysSo(t *testing.T) {
	if _, err := os.Stat("/sys/module/ipip"); err == nil {
		t.Skip("this kernel has IPIP")
	}
	n := testenv.NewNetNS(t)
	n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	conf := filepath.Join(t.TempDir(), "net-conf.json")
	os.WriteFile(conf, []byte(`{"Network":"100.96.0.0/12","Backend":{"Type":"ipip"}}`), 0o644)
	stderr, code, _ := weftd(t, n.Name, nil, 10*time.Second, "--healthz-addr", "", "--iface", "eth0",
		"--net-config-path", conf, "--etcd-endpoints", "http://198.18.0.254:2379")
	want := "this kernel has no IP-in-IP support (kernel module ipip); load it with: modprobe ipip"
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	if code != 1 || !strings.HasPrefix(last, "weftd: ") || !strings.HasSuffix(last, want) {
		t.Errorf("exit %d and last line %q; want 1 and a line ending %q:\n%s", code, last, want, stderr)
	}
}

// TestNoSecretsAndReadOnlyHealthServer: the etcd password appears in no
// log line and in nothing the health server serves, and the health server
// changes nothing.
func TestNoSecretsAndReadOnlyHealthServer(t *testing.T) {
	n := testenv.NewNetNS(t)
	n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	const password = "s3cr3t-Pa55word"
	done := make(chan string)
	go func() {
		stderr, _, _ := weftd(t, n.Name, []string{"WEFTD_ETCD_PASSWORD=" + password}, 8*time.Second,
			"--healthz-addr", "127.0.0.1:8285", "--iface", "eth0", "--etcd-username", "root",
			"--etcd-endpoints", "http://198.18.0.254:2379", "--log-level", "debug",
			"--subnet-file", filepath.Join(t.TempDir(), "subnet.env"))
		done <- stderr
	}()
	time.Sleep(3 * time.Second)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return sandbox.DialIn(ctx, n.Name, network, addr)
	}}, Timeout: 3 * time.Second}
	for _, path := range []string{"/metrics", "/status", "/healthz", "/readyz"} {
		resp, err := client.Get("http://127.0.0.1:8285" + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), password) {
			t.Errorf("%s shows the password", path)
		}
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			req, _ := http.NewRequest(method, "http://127.0.0.1:8285"+path, strings.NewReader("{}"))
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s %s = %d, want 405", method, path, resp.StatusCode)
			}
		}
	}
	stderr := <-done
	if strings.Contains(stderr, password) {
		t.Errorf("the log shows the password:\n%s", stderr)
	}
	// With credentials the client authenticates first: weftd keeps trying.
	if !strings.Contains(stderr, "cannot connect to etcd; retrying") || !strings.Contains(stderr, "dial tcp 198.18.0.254:2379") {
		t.Errorf("weftd did not say it waits for etcd and why:\n%s", stderr)
	}
}

// A flanneld unit's environment works with only the binary changed:
// FLANNELD_ variables set the flags flanneld shares with weftd, WEFTD_
// ones win, and weftd says which it used. It logs its version first.
func TestFlanneldEnvironment(t *testing.T) {
	n := testenv.NewNetNS(t)
	n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	stderr, _, _ := weftd(t, n.Name, []string{
		"FLANNELD_ETCD_ENDPOINTS=http://198.18.0.253:2379", "FLANNELD_IFACE=eth0", "FLANNELD_IP_MASQ=true",
		"WEFTD_ETCD_PREFIX=/weft/network", "FLANNELD_ETCD_PREFIX=/coreos.com/network",
	}, 4*time.Second, "--healthz-addr", "", "--subnet-file", filepath.Join(t.TempDir(), "subnet.env"))
	for _, want := range []string{
		`msg="starting weftd" commit=`,
		`msg="using flanneld's environment variables (no WEFTD_ variable of the same name is set)" variables="FLANNELD_ETCD_ENDPOINTS,FLANNELD_IFACE,FLANNELD_IP_MASQ"`,
		"198.18.0.253:2379",
		"/weft/network/config",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("weftd's log lacks %q:\n%s", want, stderr)
		}
	}
}
