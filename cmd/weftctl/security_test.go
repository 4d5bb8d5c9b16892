package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/testenv"
)

func TestEtcdOverTLSWithClientCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCA(t, dir, "ca")
	other := testenv.NewCA(t, dir, "other-ca")
	now := time.Now()
	lo := []net.IP{net.ParseIP("127.0.0.1")}
	srvCert, srvKey := ca.Issue(t, dir, "server", lo, false, now.Add(-time.Hour), now.Add(time.Hour))
	cliCert, cliKey := ca.Issue(t, dir, "client", nil, true, now.Add(-time.Hour), now.Add(time.Hour))
	oldCert, oldKey := ca.Issue(t, dir, "expired", nil, true, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	strCert, strKey := other.Issue(t, dir, "stranger", nil, true, now.Add(-time.Hour), now.Add(time.Hour))
	srv := testenv.StartEtcdWith(t, testenv.EtcdOptions{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: ca.CertFile, ClientCertAuth: true})
	ep := srv.Endpoint()
	if !strings.HasPrefix(ep, "https://") {
		t.Fatalf("endpoint %s", ep)
	}
	tls := func(caFile, cert, key string) []string {
		return []string{"--etcd-cafile", caFile, "--etcd-certfile", cert, "--etcd-keyfile", key}
	}
	doc := `{"Network":"100.96.0.0/12"}`

	// The right CA and a valid client certificate work.
	r := weftctl(t, ep, doc, append(tls(ca.CertFile, cliCert, cliKey), "config", "set", "-")...)
	if r.code != 0 {
		t.Fatalf("with valid certificates: %+v", r)
	}

	tests := []struct {
		name string
		ep   string
		args []string
		want string
	}{
		{"wrong CA for the server", ep, tls(other.CertFile, cliCert, cliKey), "certificate signed by unknown authority"},
		{"expired client certificate", ep, tls(ca.CertFile, oldCert, oldKey), "expired certificate"},
		{"client certificate from another CA", ep, tls(ca.CertFile, strCert, strKey), "unknown certificate authority"},
		{"no client certificate", ep, []string{"--etcd-cafile", ca.CertFile}, "certificate required"},
		{"plain text to a TLS server", strings.Replace(ep, "https://", "http://", 1), tls(ca.CertFile, cliCert, cliKey), "the server does not speak plain-text gRPC (it wants TLS?); use an https:// endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			r := weftctl(t, tt.ep, "", append(tt.args, "config", "get")...)
			if r.code == 0 {
				t.Fatalf("succeeded: %+v", r)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr lacks %q:\n%s", tt.want, r.stderr)
			}
			if strings.Contains(r.stdout, "100.96.0.0") {
				t.Errorf("read the configuration anyway: %s", r.stdout)
			}
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("took %v", took)
			}
		})
	}
}

func TestEtcdWithUsernameAndPassword(t *testing.T) {
	srv := testenv.StartEtcd(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const password = "s3cr3t-Pa55word"
	if _, err := cli.RoleAdd(ctx, "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserAdd(ctx, "root", password); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	ep := srv.Endpoint()
	r := weftctl(t, ep, `{"Network":"100.96.0.0/12"}`, "--etcd-username", "root", "--etcd-password", password, "config", "set", "-")
	if r.code != 0 {
		t.Fatalf("with the password: %+v", r)
	}
	for _, args := range [][]string{
		{"--etcd-username", "root", "--etcd-password", "wrong", "leases"},
		{"leases"}, // no credentials
	} {
		r := weftctl(t, ep, "", args...)
		if r.code == 0 {
			t.Errorf("%v succeeded: %+v", args, r)
		}
		if !strings.Contains(r.stderr, "authentication failed") && !strings.Contains(r.stderr, "user name is empty") && !strings.Contains(r.stderr, "permission denied") {
			t.Errorf("%v: unclear error:\n%s", args, r.stderr)
		}
	}
	// The password never appears in what weftctl prints.
	r = weftctl(t, ep, "", "--etcd-username", "root", "--etcd-password", password, "leases", "-o", "json")
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, password) {
		t.Errorf("leases: %+v", r)
	}
	r = weftctl(t, ep, "", "--etcd-username", "root", "--etcd-password", password, "--help")
	if strings.Contains(r.stdout+r.stderr, password) {
		t.Errorf("help shows the password:\n%s", r.stdout)
	}
}
