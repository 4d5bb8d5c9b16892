// Command weft is weft's CNI plugin, installed as /opt/cni/bin/weft.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/weft-net/weft/cni"
	"github.com/weft-net/weft/internal/version"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs, cni.Versions, "weft CNI plugin "+version.Get().String())
}
