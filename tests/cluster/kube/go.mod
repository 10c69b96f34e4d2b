// Wrapper module for building the Kubernetes control-plane binaries.
//
// cluster.sh copies this file into the build cache, then adds the
// k8s.io/kubernetes requirement and one replace line per staging module,
// read from that version's own go.mod. Nothing here is version-specific.
module rollgate.test/cluster/kube

go 1.26.0
