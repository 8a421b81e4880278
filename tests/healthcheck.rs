//! The `healthcheck` subcommand (the container's HEALTHCHECK) against real HTTP on loopback.

use std::process::Command;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

async fn serve() -> std::net::SocketAddr {
    let app = Router::new()
        .route(
            "/health",
            get(|| async { (StatusCode::OK, "{\"status\":\"ok\"}") }),
        )
        .route(
            "/ready",
            get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{\"status\":\"not ready\"}",
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn healthcheck(url: String) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_oneview-pagerduty-bridge"))
            .args(["healthcheck", "--url", &url, "--timeout", "5s"])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn exits_zero_on_200() {
    let addr = serve().await;
    let out = healthcheck(format!("http://{addr}/health")).await;
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn exits_one_on_503_and_names_the_status() {
    let addr = serve().await;
    let out = healthcheck(format!("http://{addr}/ready")).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503"), "{err}");
}

#[tokio::test]
async fn exits_one_when_nothing_listens() {
    // Bind then drop to get a loopback port with no listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = healthcheck(format!("http://127.0.0.1:{port}/health")).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.listen"), "{err}");
}
