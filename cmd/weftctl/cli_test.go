package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// What a user gets wrong on the command line is exit status 2 with a line
// that names it; --version says version, commit and Go; completion
// scripts come out for bash, zsh and fish.
func TestExitCodesVersionAndCompletion(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `"bogus" is not a weftctl command; use one of leases, config, service, status, sandbox, completion`},
		{[]string{"service", "bogus"}, `"bogus" is not a weftctl service command; use one of add, endpoints, rm, get, list`},
		{[]string{"config"}, "weftctl config needs a command: one of get, set"},
		{[]string{"completion", "tcsh"}, `completion: shell "tcsh" is unknown; use bash, zsh or fish`},
		{[]string{"leases", "--bogus"}, "flag provided but not defined: -bogus"},
	} {
		r := weftctl(t, "http://127.0.0.1:1", "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("weftctl %s: exit %d, stderr %q; want 2 and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
	if r := weftctl(t, "", "", "--version"); r.code != 0 || !strings.Contains(r.stdout, "(commit ") || !strings.Contains(r.stdout, ", go1.") {
		t.Errorf("--version: %+v", r)
	}
	for shell, want := range map[string]string{"bash": "complete -o bashdefault -o default -F _weftctl weftctl", "zsh": "compdef _weftctl weftctl", "fish": "complete -c weftctl"} {
		if r := weftctl(t, "", "", "completion", shell); r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: exit %d, lacks %q:\n%s", shell, r.code, want, r.stdout)
		}
	}
	// The candidates bash and zsh ask for.
	if r := weftctl(t, "", "", "service", "--generate-bash-completion"); !strings.Contains(r.stdout, "endpoints") {
		t.Errorf("service candidates: %+v", r)
	}
	// Also after an argument (the request stays last).
	if r := weftctl(t, "", "", "config", "set", "net-conf.json", "--f", "--generate-bash-completion"); r.code != 0 || !strings.Contains(r.stdout, "--force") {
		t.Errorf("config set candidates after FILE: %+v", r)
	}
}

// weftctl status exits 1 when the node is not ready, in the table and the
// JSON form alike (probes and scripts rely on it), and prints no empty
// error line; the JSON has no zero lastSync before the first sync.
func TestStatusExitsOneWhenNotReady(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"node":"node-1","ready":false,"notReady":"connecting to etcd"}`))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, format := range []string{"table", "json"} {
		r := weftctl(t, "", "", "status", "--healthz-addr", addr, "-o", format)
		if r.code != 1 || r.stderr != "" {
			t.Errorf("status -o %s of a node that is not ready: exit %d, stderr %q; want 1 and nothing", format, r.code, r.stderr)
		}
		if format == "json" && strings.Contains(r.stdout, "0001-01-01") {
			t.Errorf("status -o json shows a zero time:\n%s", r.stdout)
		}
		if format == "table" && !strings.Contains(r.stdout, "no: connecting to etcd") {
			t.Errorf("status table:\n%s", r.stdout)
		}
	}
}
