package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/internal/status"
)

// DialIn connects to addr from inside namespace name. The socket is made
// on a thread switched into the namespace and belongs to it from then on.
func DialIn(ctx context.Context, name, network, addr string) (net.Conn, error) {
	n, err := ns.GetNS(filepath.Join("/run/netns", name))
	if err != nil {
		return nil, err
	}
	defer n.Close()
	var conn net.Conn
	err = n.Do(func(ns.NetNS) error {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// InNetNS runs f on a thread switched into namespace name; sockets f
// makes belong to that namespace from then on.
func InNetNS(name string, f func() error) error {
	n, err := ns.GetNS(filepath.Join("/run/netns", name))
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return f() })
}

// healthClient talks to a weftd's health server inside namespace name.
func healthClient(name string) *http.Client {
	return &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return DialIn(ctx, name, network, addr)
			},
			DisableKeepAlives: true,
		},
	}
}

// Status asks n's weftd for its /status.
func (c *Cluster) Status(n *Node) (*status.Status, error) {
	resp, err := healthClient(n.NS).Get("http://" + healthAddr + "/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st status.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("%s: decoding /status: %w", n.Name, err)
	}
	return &st, nil
}

// Get fetches path (e.g. "/metrics") from n's weftd and returns the status
// code and body.
func (c *Cluster) Get(n *Node, path string) (int, string, error) {
	return GetIn(n.NS, "http://"+healthAddr+path)
}

// GetIn fetches url from inside the namespace ns (e.g. the fabric's, as a
// cluster's Prometheus would from another machine) and returns the status
// code and body.
func GetIn(ns, url string) (int, string, error) {
	resp, err := healthClient(ns).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// EtcdClient returns a client of the cluster's etcd, connecting from
// inside the fabric namespace. The caller closes it.
func (c *Cluster) EtcdClient() (*clientv3.Client, error) {
	fabric := c.Fabric
	return clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(c.EtcdEndpoints(), ","),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return DialIn(ctx, fabric, "tcp", addr)
		})},
	})
}
