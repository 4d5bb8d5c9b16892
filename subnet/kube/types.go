package kube

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Node is the part of a Kubernetes core/v1 Node that weft reads: its
// name, annotations and podCIDRs, decoded from the API's JSON (the rest is
// skipped). k8s.io/api's Node type would add 10 MB to weftd, whose
// binary's pages are most of its resident memory.
type Node struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              NodeSpec `json:"spec,omitempty"`
}

// NodeSpec holds the podCIDRs kube-controller-manager assigns.
type NodeSpec struct {
	PodCIDR  string   `json:"podCIDR,omitempty"`
	PodCIDRs []string `json:"podCIDRs,omitempty"`
}

// NodeList is a page of Nodes.
type NodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Node `json:"items"`
}

// DeepCopyObject implements runtime.Object.
func (n *Node) DeepCopyObject() runtime.Object {
	c := &Node{TypeMeta: n.TypeMeta, Spec: NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: slices.Clone(n.Spec.PodCIDRs)}}
	n.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return c
}

// DeepCopyObject implements runtime.Object.
func (l *NodeList) DeepCopyObject() runtime.Object {
	c := &NodeList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&c.ListMeta)
	c.Items = make([]Node, len(l.Items))
	for i := range l.Items {
		c.Items[i] = *l.Items[i].DeepCopyObject().(*Node)
	}
	return c
}

// coreV1 is the core API group's version, where Nodes are.
var coreV1 = schema.GroupVersion{Version: "v1"}

// newScheme knows Node and NodeList (and the API's own meta types).
func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	s.AddKnownTypes(coreV1, &Node{}, &NodeList{})
	metav1.AddToGroupVersion(s, coreV1)
	return s
}
