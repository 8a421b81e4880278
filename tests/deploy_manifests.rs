//! Properties of the Kubernetes manifests that the product's behaviour depends on. `deploy/`
//! is the chart rendered with its defaults (scripts/deploy-checks fails when they drift apart).

/// The poller Service as rendered into `deploy/`.
const POLLER_SERVICE: &str =
    include_str!("../deploy/manifests/service-oneview-pagerduty-bridge-poller.yaml");
const SERVICE_TEMPLATE: &str =
    include_str!("../helm/oneview-pagerduty-bridge/templates/service.yaml");

#[test]
fn web_replicas_reach_the_poller_whatever_its_readiness() {
    // The poller turns not-ready exactly when OneView or its state volume fails; a Service
    // without this would take its only endpoint away from the web replicas at that moment,
    // and the status page and write-backs would answer 503 when on-call needs them.
    assert!(
        POLLER_SERVICE
            .lines()
            .any(|l| l.trim() == "publishNotReadyAddresses: true"),
        "{POLLER_SERVICE}"
    );
    let poller_part = SERVICE_TEMPLATE
        .split("---")
        .find(|doc| doc.contains("-poller"))
        .expect("the chart has a poller Service");
    assert!(
        poller_part.contains("publishNotReadyAddresses: true"),
        "{poller_part}"
    );
    let web_part = SERVICE_TEMPLATE
        .split("---")
        .find(|doc| doc.contains("-web"))
        .expect("the chart has a web Service");
    assert!(
        !web_part.contains("publishNotReadyAddresses"),
        "the public Service keeps routing only to ready replicas"
    );
}

/// The poller Deployment, the state claim and the kustomization as rendered into `deploy/`.
const POLLER_DEPLOYMENT: &str =
    include_str!("../deploy/manifests/deployment-oneview-pagerduty-bridge-poller.yaml");
const STATE_CLAIM: &str =
    include_str!("../deploy/manifests/persistentvolumeclaim-oneview-pagerduty-bridge-state.yaml");
const KUSTOMIZATION: &str = include_str!("../deploy/kustomization.yaml");

#[test]
fn default_manifests_keep_one_poller_on_its_state_file() {
    // The default state backend is a redb file on a ReadWriteOnce volume: two pollers, or a
    // rolling update that starts the new pod before the old one is gone, would have two
    // writers (or a pod stuck waiting for the volume). Several pollers are only for the
    // postgres backend (helm/values-ha.yaml), which deploy/ does not render.
    let lines: Vec<&str> = POLLER_DEPLOYMENT.lines().map(str::trim).collect();
    assert!(lines.contains(&"replicas: 1"), "{POLLER_DEPLOYMENT}");
    assert!(lines.contains(&"type: Recreate"), "{POLLER_DEPLOYMENT}");
    assert!(!POLLER_DEPLOYMENT.contains("RollingUpdate"));
    assert!(!POLLER_DEPLOYMENT.contains("BRIDGE_LEASE__"));
    assert!(lines.contains(&"claimName: oneview-pagerduty-bridge-state"));
    assert!(STATE_CLAIM.lines().any(|l| l.trim() == "- ReadWriteOnce"));
    assert!(
        !KUSTOMIZATION.contains("poddisruptionbudget-oneview-pagerduty-bridge-poller"),
        "a PodDisruptionBudget for one poller would block every node drain"
    );
}
