package kube

import (
	"context"
	"fmt"
	"strings"

	"github.com/go-logr/logr/funcr"
	"github.com/sirupsen/logrus"
	"k8s.io/klog/v2"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Nodes is what weft needs of the Kubernetes API: the Node resource.
type Nodes interface {
	Get(ctx context.Context, name string) (*Node, error)
	List(ctx context.Context, opts metav1.ListOptions) (*NodeList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte) (*Node, error)
}

// NewClient returns the Node client weftd and weftctl use: from a
// kubeconfig file, or in a pod from its service account; apiURL, if set,
// overrides the server. It speaks JSON and knows weft's Node type only
// (types.go): client-go's clientset registers every API group, twice the
// size of weftd.
func NewClient(kubeconfig, apiURL, userAgent string) (Nodes, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" && apiURL == "" {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("not in a pod, so a kubeconfig is needed (--kubeconfig-file): %w", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags(apiURL, kubeconfig); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	scheme := newScheme()
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = userAgent
	// client-go's default of 5 requests a second would hold back a
	// listing of thousands of Nodes in pages; weft makes few requests.
	cfg.QPS, cfg.Burst = 50, 100
	cfg.APIPath = "/api"
	cfg.GroupVersion = &coreV1
	cfg.ContentType = runtime.ContentTypeJSON
	cfg.AcceptContentTypes = runtime.ContentTypeJSON
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, err
	}
	return &restNodes{rc: rc, params: runtime.NewParameterCodec(scheme)}, nil
}

type restNodes struct {
	rc     *rest.RESTClient
	params runtime.ParameterCodec
}

func (r *restNodes) Get(ctx context.Context, name string) (*Node, error) {
	n := &Node{}
	return n, r.rc.Get().Resource("nodes").Name(name).Do(ctx).Into(n)
}

func (r *restNodes) List(ctx context.Context, opts metav1.ListOptions) (*NodeList, error) {
	l := &NodeList{}
	return l, r.rc.Get().Resource("nodes").VersionedParams(&opts, r.params).Do(ctx).Into(l)
}

func (r *restNodes) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return r.rc.Get().Resource("nodes").VersionedParams(&opts, r.params).Watch(ctx)
}

func (r *restNodes) Patch(ctx context.Context, name string, pt types.PatchType, data []byte) (*Node, error) {
	n := &Node{}
	return n, r.rc.Patch(pt).Resource("nodes").Name(name).Body(data).Do(ctx).Into(n)
}

// LogTo sends what client-go logs (through klog: a watch that broke, a
// request that failed) to log at debug level, in weftd's format, instead
// of klog's lines on stderr; weft logs what matters itself.
func LogTo(log *logrus.Entry) {
	klog.SetLogger(funcr.New(func(prefix, args string) {
		log.WithField("component", "client-go").Debug(strings.TrimSpace(prefix + " " + args))
	}, funcr.Options{}))
}
