//! Names users type into Service annotations, labels and fields, and that Berth writes back.
//!
//! They are constants so the operator, the agent, the docs and the tests cannot drift apart.

/// `spec.loadBalancerClass` value that makes a Service Berth's.
///
/// A Service of `type: LoadBalancer` with this class is always handled by Berth; one with no
/// class is handled only when the operator runs with `--take-unclassed`.
pub const LOAD_BALANCER_CLASS: &str = "berth.dev/berth";

/// Annotation naming the Eip pool a Service must draw its IP from, e.g. `berth.dev/pool: blue`.
///
/// It wins over every other way of choosing a pool; a name that matches no Eip leaves the
/// Service pending with an Event saying so.
pub const ANNOTATION_POOL: &str = "berth.dev/pool";

/// Annotation requesting specific IPs, e.g. `berth.dev/ip: 10.0.0.5` or, for a dual-stack
/// Service, `berth.dev/ip: 10.0.0.5,fd00::5` (at most one per family).
///
/// Replaces the deprecated `spec.loadBalancerIP`, which Berth still honours when this
/// annotation is absent.
pub const ANNOTATION_REQUESTED_IP: &str = "berth.dev/ip";

/// Annotation letting Services share one IP, e.g. `berth.dev/allow-shared-ip: web`.
///
/// Services with the same value may share an IP when their ports (port + protocol) do not
/// collide and they agree on traffic policy: all `Cluster`, or all `Local` with the same Pod
/// selector.
pub const ANNOTATION_SHARING_KEY: &str = "berth.dev/allow-shared-ip";

/// Annotation turning weighted ECMP on (`"true"`) or off (`"false"`) for one Service,
/// overriding `BgpConf.spec.weightedEcmp`. With `externalTrafficPolicy: Local` each node's
/// weight is its number of ready endpoints.
pub const ANNOTATION_WEIGHTED_ECMP: &str = "berth.dev/weighted-ecmp";

/// Annotation the operator writes on a Service: the Eip its IPs were allocated from.
/// Read-only for users; Berth rewrites it if edited.
pub const ANNOTATION_ALLOCATED_POOL: &str = "berth.dev/allocated-pool";

/// Annotation earlier versions of the operator wrote on a Service holding Layer2 IPs. Nothing
/// reads it any more (a tenant can write annotations, so they cannot say who answers ARP);
/// the operator removes it from its Services and reports it on others. The assignment now
/// lives in Berth's namespace: see [`crate::layer2`].
pub const ANNOTATION_LAYER2: &str = "berth.dev/layer2";

/// Finalizer earlier versions of the operator put on every Service they assigned an IP to.
/// None is added any more (after `helm uninstall` it left deleted Services in Terminating);
/// the operator removes it from the Services that still carry it, and releases a deleted
/// Service's IPs when it sees the Service gone.
pub const FINALIZER_SERVICE: &str = "berth.dev/release-ip";

/// Finalizer the operator puts on every Eip: a pool whose IPs are still held by Services is
/// not deleted until they are released or moved (deleting it would make the agents stop
/// delivering and answering for those IPs), and its status says which Services hold it.
pub const FINALIZER_POOL: &str = "berth.dev/pool-in-use";

/// Standard Kubernetes label: nodes carrying it are never next hops nor Layer2 owners.
pub const LABEL_EXCLUDE_FROM_LB: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Standard label on EndpointSlices naming the Service they belong to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// `app.kubernetes.io/managed-by` value on objects Berth creates.
pub const MANAGED_BY: &str = "berth";

/// The only accepted name of the [`crate::BgpConf`] singleton.
pub const BGPCONF_NAME: &str = "default";

/// Name of the `Ready` condition on Eip and BgpPeer status.
pub const CONDITION_READY: &str = "Ready";

/// Pool annotations of the load balancers Berth replaces, honoured as requests when
/// [`ANNOTATION_POOL`] is absent (first present wins, in this order), so a Service handed
/// over from MetalLB or OpenELB keeps drawing from the pool of the same name (`berthctl
/// convert-metallb` keeps the names).
pub const FOREIGN_POOL_ANNOTATIONS: [&str; 4] = [
    "metallb.io/address-pool",
    "metallb.universe.tf/address-pool",
    "eip.openelb.kubesphere.io/v1alpha2",
    "eip.porter.kubesphere.io/v1alpha2",
];

/// Requested-IP annotations of MetalLB, honoured when [`ANNOTATION_REQUESTED_IP`] is absent
/// (same format: IPs separated by commas, at most one per family).
pub const FOREIGN_IP_ANNOTATIONS: [&str; 2] = [
    "metallb.io/loadBalancerIPs",
    "metallb.universe.tf/loadBalancerIPs",
];

/// Sharing-key annotations of MetalLB, honoured when [`ANNOTATION_SHARING_KEY`] is absent.
pub const FOREIGN_SHARING_ANNOTATIONS: [&str; 2] = [
    "metallb.io/allow-shared-ip",
    "metallb.universe.tf/allow-shared-ip",
];
