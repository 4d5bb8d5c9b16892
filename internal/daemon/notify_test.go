package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/subnet/etcd"
)

// fakeSystemd is a notify socket, set as $NOTIFY_SOCKET for the test.
type fakeSystemd struct {
	t    *testing.T
	conn *net.UnixConn
}

func newFakeSystemd(t *testing.T) *fakeSystemd {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return &fakeSystemd{t: t, conn: conn}
}

// next returns the next notification, failing the test if none comes
// within d.
func (s *fakeSystemd) next(d time.Duration) string {
	s.t.Helper()
	msg, ok := s.read(d)
	if !ok {
		s.t.Fatalf("systemd heard nothing within %v", d)
	}
	return msg
}

// expect fails the test unless the next notification is want.
func (s *fakeSystemd) expect(want string) {
	s.t.Helper()
	if got := s.next(time.Second); got != want {
		s.t.Errorf("systemd got %q, want %q", got, want)
	}
}

// expectNothing fails the test if a notification comes soon.
func (s *fakeSystemd) expectNothing() {
	s.t.Helper()
	if msg, ok := s.read(50 * time.Millisecond); ok {
		s.t.Errorf("systemd got %q, want nothing", msg)
	}
}

func (s *fakeSystemd) read(d time.Duration) (string, bool) {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	n, err := s.conn.Read(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "", false
	}
	if err != nil {
		s.t.Fatal(err)
	}
	return string(buf[:n]), true
}

func TestNotifySystemd(t *testing.T) {
	systemd := newFakeSystemd(t)
	if err := notifySystemd("READY=1"); err != nil {
		t.Fatal(err)
	}
	systemd.expect("READY=1")
	t.Setenv("NOTIFY_SOCKET", "")
	if err := notifySystemd("READY=1"); err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v", err)
	}
}

// TestBoardTellsSystemd follows a start: each new reason is a STATUS= that
// extends the start timeout, only changes are sent, and once ready the
// status says so without extending; STOPPING=1 ends it.
func TestBoardTellsSystemd(t *testing.T) {
	systemd := newFakeSystemd(t)
	const extend = "\nEXTEND_TIMEOUT_USEC=30000000"
	var b board

	b.set(func(b *board) { b.notReady = "connecting to etcd" })
	systemd.expect("STATUS=connecting to etcd" + extend)
	b.set(func(b *board) { b.notReady = "connecting to etcd" })
	b.set(func(b *board) { _ = b.ready }) // a reader, as /status is
	systemd.expectNothing()

	b.set(func(b *board) { b.notReady = "acquiring a subnet lease: node-1 holds\nits lease" })
	systemd.expect("STATUS=acquiring a subnet lease: node-1 holds its lease" + extend)

	b.set(func(b *board) { b.ready, b.notReady = true, "" })
	systemd.expect("STATUS=ready")
	b.set(func(b *board) { b.configIssue = "new configuration is invalid: no Network" })
	systemd.expect("STATUS=ready; new configuration is invalid: no Network")

	b.stop()
	systemd.expect("STOPPING=1\nSTATUS=stopping")
	b.stop()
	b.set(func(b *board) { b.configIssue = "" })
	systemd.expectNothing()
}

// TestRunTellsSystemdWhileEtcdIsAway runs weftd against an etcd that is
// not there: systemd hears why it is not ready yet, each reason extending
// the start timeout, and STOPPING=1 when it is told to stop.
func TestRunTellsSystemdWhileEtcdIsAway(t *testing.T) {
	systemd := newFakeSystemd(t)
	log := logrus.New()
	log.SetOutput(io.Discard)
	cfg := &Config{
		Etcd:   etcd.ClientConfig{Endpoints: []string{"http://127.0.0.1:1"}},
		Prefix: "/weft/network", LeaseTTL: time.Minute, SubnetFile: filepath.Join(t.TempDir(), "subnet.env"),
		NodeName: "node-1", ResyncInterval: time.Second, GCPercent: 25, Log: log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()

	const extend = "\nEXTEND_TIMEOUT_USEC=30000000"
	systemd.expect("STATUS=starting" + extend)
	systemd.expect("STATUS=connecting to etcd" + extend)
	systemd.expect("STATUS=reading the network configuration" + extend)
	systemd.expectNothing() // waiting for etcd is no progress
	cancel()
	systemd.expect("STOPPING=1\nSTATUS=stopping")
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	systemd.expectNothing()
}
