package testenv

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdOptions are an etcd server's TLS settings; the zero value serves plain HTTP.
type EtcdOptions struct {
	CertFile, KeyFile string // server certificate: serve https
	TrustedCAFile     string // CA of client certificates
	ClientCertAuth    bool   // require client certificates
}

// EtcdServer is a real etcd server (cmd/weft-etcd, etcd's own server
// code) run as a child process for one test, which can stop, restart,
// kill and compact it: one member on loopback. Its methods are not safe for
// concurrent use.
type EtcdServer struct {
	t          testing.TB
	opts       EtcdOptions
	bin        string
	dataDir    string
	clientAddr string
	peerAddr   string
	cmd        *exec.Cmd
	exited     chan struct{}
	logs       *os.File
}

// StartEtcd builds weft-etcd if needed and starts a single-member server with a
// fresh data directory. The server is killed when the test ends.
func StartEtcd(t testing.TB) *EtcdServer {
	t.Helper()
	return StartEtcdWith(t, EtcdOptions{})
}

// StartEtcdWith is StartEtcd with TLS options.
func StartEtcdWith(t testing.TB, opts EtcdOptions) *EtcdServer {
	t.Helper()
	s := &EtcdServer{
		opts:       opts,
		t:          t,
		bin:        Binary(t, "weft-etcd"),
		dataDir:    t.TempDir(),
		clientAddr: freeAddr(t),
		peerAddr:   freeAddr(t),
	}
	logs, err := os.Create(filepath.Join(t.TempDir(), "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	s.logs = logs
	t.Cleanup(func() {
		s.Kill()
		logs.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logs.Name()); err == nil && len(b) > 0 {
				t.Logf("etcd log:\n%s", Tail(b, 4000))
			}
		}
	})
	s.Restart()
	return s
}

// Endpoint returns the client URL.
func (s *EtcdServer) Endpoint() string {
	if s.opts.CertFile != "" {
		return "https://" + s.clientAddr
	}
	return "http://" + s.clientAddr
}

// Restart starts the server again on the same data and address after Stop
// or Kill (or the first time), and waits until it serves clients.
func (s *EtcdServer) Restart() {
	s.t.Helper()
	if s.cmd != nil {
		s.t.Fatal("testenv: Restart while the server runs")
	}
	cmd := exec.Command(s.bin,
		"--data-dir", s.dataDir,
		"--listen-client-urls", s.Endpoint(),
		"--listen-peer-urls", "http://"+s.peerAddr,
		"--unsafe-no-fsync")
	if o := s.opts; o.CertFile != "" {
		cmd.Args = append(cmd.Args, "--cert-file", o.CertFile, "--key-file", o.KeyFile, "--trusted-ca-file", o.TrustedCAFile)
		if o.ClientCertAuth {
			cmd.Args = append(cmd.Args, "--client-cert-auth")
		}
	}
	cmd.Stderr = s.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting etcd: %v", err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- true
				break
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() { cmd.Wait(); close(s.exited) }()
	select {
	case <-ready:
	case <-s.exited:
		s.cmd = nil
		s.t.Fatalf("etcd exited before it was ready; see its log")
	case <-time.After(60 * time.Second):
		s.t.Fatalf("etcd was not ready within 60s")
	}
}

// Stop shuts the server down cleanly (SIGTERM) and waits for it to exit.
func (s *EtcdServer) Stop() { s.signal(syscall.SIGTERM) }

// Kill kills the server (SIGKILL) and waits for it to exit.
func (s *EtcdServer) Kill() { s.signal(syscall.SIGKILL) }

func (s *EtcdServer) signal(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Client returns a client of the server, closed when the test ends.
func (s *EtcdServer) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("connecting to etcd: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Compact compacts the server's history up to its current revision.
func (s *EtcdServer) Compact(t testing.TB) int64 {
	t.Helper()
	cli := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "compact-probe")
	if err != nil {
		t.Fatal(err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compacting to %d: %v", rev, err)
	}
	return rev
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
