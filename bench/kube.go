package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/subnet/kube"
)

// kubeResult is a node's cold start in Kubernetes mode.
type kubeResult struct {
	N        int
	Converge time.Duration
}

// kubeColdStart registers n Nodes as weft nodes would leave them (podCIDR
// and annotations, vxlan), then starts one more node's weftd with
// --kube-subnet-mgr and measures until its kernel has a route for every
// one of them.
func kubeColdStart(ctx context.Context, bin string, n int) (kubeResult, error) {
	res := kubeResult{N: n}
	dir, err := os.MkdirTemp("", "weft-bench-")
	if err != nil {
		return res, err
	}
	c, err := sandbox.Up(ctx, sandbox.Options{
		Name: fmt.Sprintf("wk%d", os.Getpid()%100000), Dir: dir, BinDir: bin, NetConf: benchConf,
		ResyncInterval: 5 * time.Second, EtcdFsync: true, Kube: true,
	})
	if err != nil {
		return res, err
	}
	defer release(c)
	cs, err := c.KubeClient()
	if err != nil {
		return res, err
	}
	// Subnets from the top of the network, where kube-controller-manager
	// (allocating from the bottom for the measured node) does not go.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				key, value := peerLease(16382 - i)
				var a struct {
					PublicIP    string
					BackendType string
					BackendData json.RawMessage
				}
				if err := json.Unmarshal([]byte(value), &a); err != nil {
					errs <- err
					return
				}
				cidr := strings.Replace(key, "-", "/", 1)
				node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("peer-%d", i), Annotations: map[string]string{
					kube.DefaultPrefix + "/backend-type": a.BackendType,
					kube.DefaultPrefix + "/backend-data": string(a.BackendData),
					kube.DefaultPrefix + "/public-ip":    a.PublicIP,
				}}, Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
				if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("creating Node %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return res, err
	}
	node, err := c.PrepareNode(0)
	if err != nil {
		return res, err
	}
	res.Converge, err = timeToRoutes(c, node, n)
	return res, err
}
