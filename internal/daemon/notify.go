package daemon

import (
	"net"
	"os"
)

// notifySystemd tells systemd (Type=notify) that weftd is ready, if it was
// started by systemd with $NOTIFY_SOCKET. It is a no-op otherwise.
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
	_, err = conn.Write([]byte(state))
	return err
}
