// Wrapper module for building Argo Rollouts' controller, the peer that
// rollgate's benchmarks compare with (issue #23).
//
// argo.sh copies this file into the build cache and adds every `replace`
// line of the pinned argo-rollouts version's own go.mod (replace lines only
// apply in the main module, and argo-rollouts pins all k8s.io modules with
// them). The pinned version is the require line below: v1.10.1 is the
// newest whose `go` line this machine's Go 1.26.8 accepts (v1.10.2 needs
// 1.26.10); its Kubernetes libraries are v0.34.5, and the controller runs
// against the test cluster's v1.36 apiserver (client-go supports that skew).
module rollgate.test/cluster/argo

go 1.26.1

require github.com/argoproj/argo-rollouts v1.10.1
