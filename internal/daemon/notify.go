package daemon

import (
	"net"
	"os"
	"time"
)

// notifyTimeout bounds one notification: a datagram to a local socket
// normally goes at once, and only waits while systemd's queue is full.
const notifyTimeout = time.Second

// startExtension is how much longer systemd waits for READY=1 each time
// weftd, still starting, reports a new reason it is not ready
// (EXTEND_TIMEOUT_USEC). A start that keeps making progress is not killed
// at TimeoutStartSec; one stuck on the same reason (etcd unreachable) is,
// at most this long after its last change, so that what is ordered after
// weftd (the kubelet) is not held back for ever.
const startExtension = 30 * time.Second

// notifySystemd sends state, one or more newline-separated assignments
// such as READY=1 or STATUS=…, to systemd (Type=notify) in one datagram,
// if weftd was started by systemd with $NOTIFY_SOCKET. It is a no-op
// otherwise. It waits at most notifyTimeout and is safe for concurrent
// use.
func notifySystemd(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // abstract socket
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetWriteDeadline(time.Now().Add(notifyTimeout))
	_, err = conn.Write([]byte(state))
	return err
}
