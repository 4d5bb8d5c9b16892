package sandbox

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/dist"
	"github.com/weft-net/weft/subnet"
)

// The sandbox's Kubernetes control plane (Options.Kube): kube-apiserver
// and kube-controller-manager in the fabric namespace, on the cluster's
// etcd, the API at https://198.18.0.254:6443. kube-controller-manager
// allocates every Node a /24 podCIDR from the pod network; weftd runs
// with --kube-subnet-mgr as the ServiceAccount kube-weft/weft, bound to
// the ClusterRole of dist/kubernetes/weft.yaml.
const (
	kubePort = 6443
	// ServiceCIDR is the API server's service range (kept out of 10/8).
	ServiceCIDR = "100.64.0.0/16"
	// KubeNamespace and KubeServiceAccount are weftd's identity.
	KubeNamespace      = "kube-weft"
	KubeServiceAccount = "weft"
)

// KubeAPI is the API server's URL as nodes see it.
func KubeAPI() string { return fmt.Sprintf("https://%s:%d", FabricIP, kubePort) }

// kubePlane is the running control plane.
type kubePlane struct {
	dir                string
	apiserver, manager *process
	admin              *rest.Config
}

func (c *Cluster) kubeDir() string { return filepath.Join(c.opts.Dir, "kube") }

// startKube brings up the control plane and weftd's identity. rbac is
// the YAML holding the ClusterRole and ClusterRoleBinding for weftd.
func (c *Cluster) startKube(ctx context.Context) error {
	for _, b := range []string{"kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(c.opts.BinDir, b)); err != nil {
			return fmt.Errorf("sandbox: Kubernetes mode needs %s in %s: make kube-bins builds it (tools/kube)", b, c.opts.BinDir)
		}
	}
	dir := c.kubeDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	k := &kubePlane{dir: dir}
	c.kube = k
	if err := writePKI(dir); err != nil {
		return err
	}
	if err := c.startAPIServer(ctx); err != nil {
		return err
	}
	cs, err := c.KubeClient()
	if err != nil {
		return err
	}
	if err := c.kubeIdentity(ctx, cs); err != nil {
		return err
	}
	return c.startControllerManager()
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	k := c.kube
	f := func(name string) string { return filepath.Join(k.dir, name) }
	args := []string{
		"--etcd-servers", c.EtcdEndpoints(),
		"--bind-address", FabricIP.String(), "--advertise-address", FabricIP.String(),
		"--secure-port", fmt.Sprint(kubePort),
		"--endpoint-reconciler-type", "none",
		"--tls-cert-file", f("apiserver.pem"), "--tls-private-key-file", f("apiserver-key.pem"),
		"--client-ca-file", f("ca.pem"),
		"--service-account-key-file", f("sa.pub"), "--service-account-signing-key-file", f("sa-key.pem"),
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", ServiceCIDR,
		"--cert-dir", f("certs"),
	}
	p, err := c.start(c.Fabric, f("kube-apiserver.log"), filepath.Join(c.opts.BinDir, "kube-apiserver"), args...)
	if err != nil {
		return err
	}
	k.apiserver = p
	k.admin = &rest.Config{
		Host: KubeAPI(), TLSClientConfig: rest.TLSClientConfig{CAFile: f("ca.pem"), CertFile: f("admin.pem"), KeyFile: f("admin-key.pem")},
		QPS: 500, Burst: 1000, // tests and benchmarks create Nodes by the thousand
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return DialIn(ctx, c.Fabric, network, addr)
		},
	}
	hc, err := rest.HTTPClientFor(k.admin)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := hc.Get(KubeAPI() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("sandbox: kube-apiserver exited:\n%s", tailFile(f("kube-apiserver.log"), 2000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("sandbox: kube-apiserver not ready after 90s (%v):\n%s", err, tailFile(f("kube-apiserver.log"), 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *Cluster) startControllerManager() error {
	k := c.kube
	f := func(name string) string { return filepath.Join(k.dir, name) }
	// As an administrator: the controllers' own roles come with
	// per-controller service accounts, which this control plane does not
	// run.
	if err := writeKubeconfig(f("controller-manager.kubeconfig"), map[string]string{"client-certificate": f("admin.pem"), "client-key": f("admin-key.pem")}, f("ca.pem")); err != nil {
		return err
	}
	var pods []string
	masks := []string{}
	conf, _, err := subnet.ParseConfig([]byte(c.opts.NetConf))
	if err != nil {
		return err
	}
	for _, pool := range conf.Pools() {
		pods = append(pods, pool.Network.String())
		fam := map[bool]string{false: "ipv4", true: "ipv6"}[pool.IPv6()]
		masks = append(masks, "--node-cidr-mask-size-"+fam, fmt.Sprint(pool.SubnetLen))
	}
	args := append([]string{
		"--kubeconfig", f("controller-manager.kubeconfig"),
		"--controllers", "nodeipam",
		"--allocate-node-cidrs", "--cluster-cidr", strings.Join(pods, ","),
		"--service-cluster-ip-range", ServiceCIDR,
		"--leader-elect=false", "--secure-port", "0",
		"--use-service-account-credentials=false",
	}, masks...)
	p, err := c.start(c.Fabric, f("kube-controller-manager.log"), filepath.Join(c.opts.BinDir, "kube-controller-manager"), args...)
	if err != nil {
		return err
	}
	k.manager = p
	// It fails (bad flags) within a second or two, or runs.
	for range 20 {
		if p.exited() {
			return fmt.Errorf("sandbox: kube-controller-manager exited:\n%s", tailFile(f("kube-controller-manager.log"), 2000))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// kubeIdentity creates weftd's namespace, ServiceAccount, ClusterRole and
// binding (from dist/kubernetes/weft.yaml, as a user applies them) and a
// kubeconfig with the ServiceAccount's token for every weftd.
func (c *Cluster) kubeIdentity(ctx context.Context, cs kubernetes.Interface) error {
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: KubeNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := cs.CoreV1().ServiceAccounts(KubeNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: KubeServiceAccount}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	role, binding, err := distRBAC(dist.KubeManifest)
	if err != nil {
		return err
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	exp := int64(24 * 3600)
	tok, err := cs.CoreV1().ServiceAccounts(KubeNamespace).CreateToken(ctx, KubeServiceAccount, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("sandbox: a token for %s/%s: %w", KubeNamespace, KubeServiceAccount, err)
	}
	return writeKubeconfig(c.WeftdKubeconfig(), map[string]string{"token": tok.Status.Token}, filepath.Join(c.kube.dir, "ca.pem"))
}

// distRBAC reads the ClusterRole and ClusterRoleBinding from a manifest.
func distRBAC(data []byte) (*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding, error) {
	const path = "dist/kubernetes/weft.yaml"
	var role *rbacv1.ClusterRole
	var binding *rbacv1.ClusterRoleBinding
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var meta metav1.TypeMeta
		err := yaml.Unmarshal([]byte(doc), &meta)
		switch meta.Kind {
		case "ClusterRole":
			role = &rbacv1.ClusterRole{}
			err = yaml.UnmarshalStrict([]byte(doc), role)
		case "ClusterRoleBinding":
			binding = &rbacv1.ClusterRoleBinding{}
			err = yaml.UnmarshalStrict([]byte(doc), binding)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %s: %w", path, meta.Kind, err)
		}
	}
	if role == nil || binding == nil {
		return nil, nil, fmt.Errorf("%s has no ClusterRole and ClusterRoleBinding", path)
	}
	return role, binding, nil
}

// WeftdKubeconfig is the kubeconfig every weftd runs with: the API at
// KubeAPI, the ServiceAccount's token.
func (c *Cluster) WeftdKubeconfig() string { return filepath.Join(c.kubeDir(), "weftd.kubeconfig") }

// KubeClient returns an administrator's client of the sandbox's API
// server, usable from outside the namespaces.
func (c *Cluster) KubeClient() (kubernetes.Interface, error) {
	if c.kube == nil {
		return nil, errors.New("sandbox: no Kubernetes control plane (Options.Kube)")
	}
	return kubernetes.NewForConfig(c.kube.admin)
}

// KubeConfig is the administrator's client configuration.
func (c *Cluster) KubeConfig() *rest.Config { return rest.CopyConfig(c.kube.admin) }

// StopKubeAPI stops the API server (the controller manager keeps
// retrying); StartKubeAPI starts it again.
func (c *Cluster) StopKubeAPI() {
	if c.kube != nil && c.kube.apiserver != nil {
		c.kube.apiserver.stop(syscall.SIGTERM)
		c.kube.apiserver = nil
	}
}

// StartKubeAPI starts the API server again and waits until it is ready.
func (c *Cluster) StartKubeAPI(ctx context.Context) error { return c.startAPIServer(ctx) }

// RegisterKubeNode creates n's Node object, as its kubelet would (no
// kubelet runs here); kube-controller-manager then gives it a podCIDR.
// Starting weftd does it, unless done before.
func (c *Cluster) RegisterKubeNode(ctx context.Context, n *Node) error {
	cs, err := c.KubeClient()
	if err != nil {
		return err
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP.String()}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("sandbox: creating Node %s: %w", n.Name, err)
	}
	n.registered = true
	return nil
}

// DeleteKubeNode deletes n's Node object.
func (c *Cluster) DeleteKubeNode(ctx context.Context, n *Node) error {
	cs, err := c.KubeClient()
	if err != nil {
		return err
	}
	return cs.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
}

func (c *Cluster) stopKube() {
	if c.kube == nil {
		return
	}
	for _, p := range []*process{c.kube.manager, c.kube.apiserver} {
		if p != nil {
			p.stop(syscall.SIGTERM)
		}
	}
	c.kube = nil
}

// writeKubeconfig writes a kubeconfig for the sandbox's API server with
// user, the credentials (token, or client-certificate and client-key).
func writeKubeconfig(path string, user map[string]string, ca string) error {
	doc := map[string]any{
		"apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
		"clusters": []any{map[string]any{"name": "sandbox", "cluster": map[string]any{"server": KubeAPI(), "certificate-authority": ca}}},
		"users":    []any{map[string]any{"name": "user", "user": user}},
		"contexts": []any{map[string]any{"name": "sandbox", "context": map[string]any{"cluster": "sandbox", "user": "user"}}},
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// writePKI writes the sandbox's CA, the API server's serving certificate,
// a client certificate for the administrator, and the service-account
// signing key pair.
func writePKI(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weft-sandbox-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	if err := writePEM(filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	issue := func(name string, serial int64, subject pkix.Name, ips []net.IP, dns []string, usage x509.ExtKeyUsage) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: subject, IPAddresses: ips, DNSNames: dns,
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		return errors.Join(writePEM(filepath.Join(dir, name+".pem"), "CERTIFICATE", der), writePEM(filepath.Join(dir, name+"-key.pem"), "PRIVATE KEY", kder))
	}
	if err := errors.Join(
		issue("apiserver", 2, pkix.Name{CommonName: "kube-apiserver"}, []net.IP{net.ParseIP(FabricIP.String()), net.ParseIP("100.64.0.1")}, []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc"}, x509.ExtKeyUsageServerAuth),
		issue("admin", 3, pkix.Name{CommonName: "sandbox-admin", Organization: []string{"system:masters"}}, nil, nil, x509.ExtKeyUsageClientAuth),
	); err != nil {
		return err
	}
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	return errors.Join(writePEM(filepath.Join(dir, "sa-key.pem"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(sa)), writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub))
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
