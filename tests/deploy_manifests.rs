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
