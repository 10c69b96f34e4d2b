//! Conformance with Kubernetes' Deployment controller and Argo Rollouts' basic canary: our own ports
//! of their logic, their public test tables, and their validation rules through the real binary.

mod conformance {
    mod argo;
    mod kubernetes;
    mod support;
    mod validation;
}
