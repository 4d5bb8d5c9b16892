// Package dist holds what weft ships besides its binaries: the systemd
// unit, the Kubernetes manifests, an example CNI conflist. The manifests
// are embedded so that the sandbox applies the very RBAC rules a user
// applies.
package dist

import _ "embed"

// KubeManifest is kubernetes/weft.yaml: weft in Kubernetes mode.
//
//go:embed kubernetes/weft.yaml
var KubeManifest []byte
