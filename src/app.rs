//! Process assembly: [`App::build`] turns a validated [`Config`] into a bound HTTP listener plus
//! the background tasks of the chosen role; [`App::run`] serves until the shutdown token fires
//! and then drains. `main`, the `demo` command and the tests all go through this one path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::{self, CoreState};
use crate::metrics::{self, HttpMetrics};
use crate::readiness::Readiness;

pub use crate::task::Task;

/// Starting or running the application failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "cannot listen on {addr} (server.listen): {source}; is another process using the port?"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Component(String),
    /// The state file cannot be used (corrupt, newer schema, locked, unreadable): the bridge
    /// refuses to start rather than forget what PagerDuty was told.
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    /// This poller led and lost (or could not renew) its lease: it stopped sending and exits,
    /// so its supervisor restarts it as a standby.
    #[error("{0}")]
    Leadership(#[from] crate::leader::LeadershipError),
}

/// A poller's lease, once it leads (state backend `postgres`).
struct Leading {
    leadership: Arc<crate::leader::Leadership>,
    epoch: u64,
}

/// An assembled, not yet running bridge.
pub struct App {
    config: Arc<Config>,
    listener: TcpListener,
    router: Router,
    readiness: Arc<Readiness>,
    connections: http::serve::ConnectionMetrics,
    /// Cancelled when the role's work must stop (after the drain delay).
    work: CancellationToken,
    tasks: Vec<Task>,
    leading: Option<Leading>,
}

impl App {
    /// Binds the listener and assembles the role's components.
    pub async fn build(config: Config) -> Result<App, AppError> {
        Self::build_until(config, &CancellationToken::new())
            .await?
            .ok_or_else(|| AppError::Component("stopped while standing by".into()))
    }

    /// [`App::build`], for a poller that may have to stand by first: with a shared state
    /// database it serves `/health`, `/ready` and `/metrics` while another poller leads, and
    /// assembles the pipeline once it holds the lease. `None`: `shutdown` fired while standing by.
    pub async fn build_until(
        config: Config,
        shutdown: &CancellationToken,
    ) -> Result<Option<App>, AppError> {
        let config = Arc::new(config);
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.server.listen,
                source,
            })?;
        let readiness = Arc::new(Readiness::new());
        let mut registry = metrics::new_registry(config.role.as_str());
        let http_metrics = HttpMetrics::register(&mut registry);
        let connections = http::serve::ConnectionMetrics::register(&mut registry);
        let work = CancellationToken::new();
        let mut tasks: Vec<Task> = Vec::new();
        let mut extra_routes = Router::new();
        let mut local = None;
        let mut leading = None;
        let mut listener = listener;

        if config.role.polls() {
            let shared = config.state.backend == crate::config::StateBackend::Postgres;
            let leader_metrics = crate::leader::LeaderMetrics::default();
            if shared {
                leader_metrics.register(&mut registry);
            }
            let core_only = CoreOnly {
                config: &config,
                metrics: &leader_metrics,
                readiness: readiness.clone(),
                http_metrics: http_metrics.clone(),
                connections: connections.clone(),
            };
            let opened = if shared {
                // A database that is down at start is waited for (a crash loop would only
                // back off longer), serving /health, /ready (503: state_store) and /metrics.
                let (l, opened) = core_only
                    .serve_while(
                        listener,
                        open_shared(&config, &readiness, &leader_metrics, shutdown),
                    )
                    .await?;
                listener = l;
                let Some(opened) = opened else {
                    return Ok(None);
                };
                opened
            } else {
                let state_cfg = config.state.clone();
                // Opening and loading read the whole file: off the async workers.
                tokio::task::spawn_blocking(move || crate::state::open(&state_cfg))
                    .await
                    .map_err(|e| {
                        AppError::Component(format!("opening the state store failed: {e}"))
                    })?
            };
            // A shared database: lead, or stand by until the lease is ours. The snapshot is
            // read only then, so it holds everything the previous leader committed.
            if let Ok(store) = &opened
                && let Some(lease_store) = store.clone().lease()
            {
                let leadership = crate::leader::Leadership::new(
                    lease_store,
                    config.lease.clone(),
                    leader_metrics.clone(),
                    readiness.clone(),
                );
                tracing::info!(holder = %leadership.holder(), listen = %config.server.listen, "poller started; waiting for the leadership lease");
                let (l, epoch) = core_only
                    .serve_while(listener, leadership.acquire(shutdown))
                    .await?;
                listener = l;
                let Some(epoch) = epoch else {
                    return Ok(None);
                };
                leading = Some(Leading { leadership, epoch });
            }
            let opened = match opened {
                Ok(store) => tokio::task::spawn_blocking(move || {
                    let snapshot = store.load()?;
                    Ok::<_, crate::state::StateError>((store, snapshot))
                })
                .await
                .map_err(|e| AppError::Component(format!("loading the state store failed: {e}")))?,
                Err(e) => Err(e),
            };
            let (store, snapshot) = match opened {
                Ok(o) => o,
                // The OS refused (read-only volume, full disk, permissions): the file itself
                // is fine and is left as it is, so its outbox is resumed once the volume is
                // fixed. Exiting would only crash-loop; paging goes on from memory meanwhile
                // and readiness says why.
                Err(e @ crate::state::StateError::Io { .. }) => {
                    tracing::error!(error = %e, "cannot use the state file; delivering from memory (nothing is remembered across restarts) until the volume is fixed and the bridge restarted");
                    readiness.set_unmet(crate::state::READY_STATE, e.to_string());
                    let store: Arc<dyn crate::state::StateStore> =
                        Arc::new(crate::state::MemoryStore::new());
                    (store, crate::state::Snapshot::default())
                }
                // Corrupt, newer schema, locked by another poller: never start without it.
                Err(e) => return Err(e.into()),
            };
            let ledger_open = snapshot.open_keys();
            tracing::info!(
                store = store.kind(),
                path = ?store.path(),
                ledger = snapshot.ledger.len(),
                outbox = snapshot.outbox.len(),
                open_in_pagerduty = ledger_open.len(),
                dead_letters = snapshot.dead_letters.len(),
                "delivery state loaded"
            );
            let delivery = crate::pagerduty::assemble_durable(
                &config,
                &mut registry,
                readiness.clone(),
                work.clone(),
                crate::pagerduty::Tuning::default(),
                Some(crate::pagerduty::DurableState {
                    store,
                    snapshot,
                    retention: config.state.retention,
                    gate: leading.as_ref().map(|l| l.leadership.gate()),
                }),
            )
            .map_err(|e| AppError::Component(e.to_string()))?;
            let pollers = crate::oneview::assemble_all(
                &config,
                &mut registry,
                readiness.clone(),
                |name| delivery.intake(name),
                work.clone(),
                &ledger_open,
            )
            .map_err(|e| AppError::Component(e.to_string()))?;
            // Change events from OneView tasks (off unless `change_events.enabled`): through
            // each appliance's own client and session.
            let clients: Vec<_> = pollers
                .iter()
                .map(|p| (p.appliance.clone(), p.client.clone()))
                .collect();
            tasks.extend(
                crate::change_events::assemble(
                    &config.appliances,
                    &clients,
                    delivery.change.as_ref(),
                    &mut registry,
                    &work,
                )
                .map_err(|e| AppError::Component(e.to_string()))?,
            );
            let mut appliances = Vec::with_capacity(pollers.len());
            for mut p in pollers {
                tasks.push(std::mem::replace(&mut p.task, Box::pin(async {})));
                appliances.push(crate::web::control::LocalAppliance::from(p));
            }
            local = Some(Arc::new(crate::web::control::Local::new(
                config.clone(),
                appliances,
                delivery.incidents.clone(),
                delivery.changes.clone(),
                delivery.pushes.clone(),
                delivery.status.clone(),
                delivery.silences.clone(),
            )));
            tasks.push(delivery.task);
        }
        let web = crate::web::assemble(&config, local, &mut registry, work.clone())?;
        extra_routes = extra_routes.merge(web.router);
        tasks.extend(web.tasks);

        for w in &config.warnings {
            tracing::warn!(warning = %w, "configuration warning");
        }
        let health_warnings: Vec<String> = config
            .warnings
            .iter()
            .filter(|w| w.contains("tls_insecure_skip_verify"))
            .cloned()
            .collect();

        let core = CoreState {
            role: config.role,
            started: Instant::now(),
            readiness: readiness.clone(),
            registry: Arc::new(registry),
            health_warnings: Arc::new(health_warnings),
        };
        let router = http::finish(http::core_routes(core).merge(extra_routes), http_metrics);
        Ok(Some(App {
            config,
            listener,
            router,
            readiness,
            connections,
            work,
            tasks,
            leading,
        }))
    }

    /// The address the HTTP server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or(self.config.server.listen)
    }

    /// Shared readiness state, for embedding callers.
    pub fn readiness(&self) -> Arc<Readiness> {
        self.readiness.clone()
    }

    /// Serves and runs the role's tasks until `shutdown` is cancelled, then drains: readiness
    /// turns 503 at once, after `server.drain_delay` the tasks are cancelled and get
    /// `server.shutdown_timeout` to finish, then the HTTP server stops.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let App {
            config,
            listener,
            router,
            readiness,
            connections,
            work,
            tasks,
            leading,
        } = self;
        let tracker = TaskTracker::new();
        for t in tasks {
            tracker.spawn(t);
        }
        tracker.close();
        // The lease is kept beside the work; losing it stops the work at once.
        let mut lost = {
            let leading = leading.as_ref().map(|l| (l.leadership.clone(), l.epoch));
            let work = work.clone();
            tokio::spawn(async move {
                match leading {
                    Some((l, epoch)) => l.keep(epoch, work).await,
                    None => {
                        work.cancelled().await;
                        Ok(())
                    }
                }
            })
        };

        let stop_server = CancellationToken::new();
        let server = {
            let stop = stop_server.clone();
            let limits = http::serve::Limits::from_config(&config.server);
            tokio::spawn(async move {
                http::serve::serve(listener, router, limits, connections, stop).await
            })
        };
        tracing::info!(
            role = %config.role,
            listen = %config.server.listen,
            version = env!("CARGO_PKG_VERSION"),
            "bridge started"
        );

        // Either a shutdown request, or the server dying on its own.
        let mut server = server;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            res = &mut lost => {
                if let Ok(Err(e)) = res {
                    // Not leading any more: no drain delay, the new leader is already working.
                    readiness.begin_shutdown();
                    work.cancel();
                    let _ = tokio::time::timeout(config.server.shutdown_timeout, tracker.wait()).await;
                    stop_server.cancel();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
                    return Err(AppError::Leadership(e));
                }
            }
            res = &mut server => {
                work.cancel();
                return match res {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(AppError::Serve(e)),
                    Err(e) => Err(AppError::Component(format!("HTTP server task failed: {e}"))),
                };
            }
        }

        readiness.begin_shutdown();
        tracing::info!(
            drain_delay = ?config.server.drain_delay,
            shutdown_timeout = ?config.server.shutdown_timeout,
            "shutdown requested; readiness is now 503"
        );
        tokio::time::sleep(config.server.drain_delay).await;
        work.cancel();
        if tokio::time::timeout(config.server.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?config.server.shutdown_timeout,
                "background work did not finish within server.shutdown_timeout; exiting anyway"
            );
        }
        // Only now, with the work drained, may a standby take over: at once, not at expiry.
        if let Some(l) = &leading {
            l.leadership.release(l.epoch).await;
        }
        stop_server.cancel();
        // Open keep-alive connections must not hold the exit hostage.
        if let Ok(Ok(Err(e))) =
            tokio::time::timeout(std::time::Duration::from_secs(2), server).await
        {
            return Err(AppError::Serve(e));
        }
        tracing::info!("bridge stopped");
        Ok(())
    }
}

/// Opens the shared state database, trying again with backoff while it cannot be reached
/// (down, not accepting connections yet, credentials not yet mounted). `None`: `shutdown` fired.
/// Errors no retry can fix (a newer schema, a TLS setup that cannot work) are returned at once.
async fn open_shared(
    config: &Config,
    readiness: &Readiness,
    metrics: &crate::leader::LeaderMetrics,
    shutdown: &CancellationToken,
) -> Option<Result<Arc<dyn crate::state::StateStore>, crate::state::StateError>> {
    use backon::BackoffBuilder;
    // The same jittered exponential backoff as the OneView session: a fleet restarted together
    // does not retry together against a database that is coming back. backon's jitter adds up
    // to the delay itself, so a 15 s cap waits at most 30 s.
    let mut delays = backon::ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(std::time::Duration::from_secs(1))
        .with_max_delay(std::time::Duration::from_secs(15))
        .without_max_times()
        .build();
    loop {
        let state_cfg = config.state.clone();
        let opened = match tokio::task::spawn_blocking(move || crate::state::open(&state_cfg)).await
        {
            Ok(r) => r,
            Err(e) => Err(crate::state::StateError::Database {
                target: "state.url".to_owned(),
                op: "open",
                detail: format!("the opening task failed: {e}"),
            }),
        };
        let wait = match opened {
            Ok(store) => {
                metrics.set_database_up(true);
                readiness.set_met(crate::state::READY_STATE);
                return Some(Ok(store));
            }
            Err(e) if e.is_transient() => {
                let wait = delays.next().unwrap_or(std::time::Duration::from_secs(30));
                metrics.set_database_up(false);
                readiness.set_unmet(crate::state::READY_STATE, e.to_string());
                tracing::error!(error = %e, retry_in = ?wait, "cannot open the state database; this poller neither leads nor stands by until it can");
                wait
            }
            Err(e) => return Some(Err(e)),
        };
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What a poller serves before it has a pipeline (opening the shared database, standing by
/// for the lease): `/health`, `/ready`, `/metrics`, and 503 `not_leader` on the internal API.
struct CoreOnly<'a> {
    config: &'a Config,
    metrics: &'a crate::leader::LeaderMetrics,
    readiness: Arc<Readiness>,
    http_metrics: HttpMetrics,
    connections: http::serve::ConnectionMetrics,
}

impl CoreOnly<'_> {
    /// Serves on `listener` while `until` runs; gives the listener back for the full app.
    async fn serve_while<T>(
        &self,
        listener: TcpListener,
        until: impl std::future::Future<Output = T>,
    ) -> Result<(TcpListener, T), AppError> {
        let config = self.config;
        let addr = config.server.listen;
        let io = |source: std::io::Error| AppError::Bind { addr, source };
        // Two handles on one socket: the standby server's is closed before the app takes over.
        let std = listener.into_std().map_err(io)?;
        let dup = std.try_clone().map_err(io)?;
        let listener = TcpListener::from_std(std).map_err(io)?;
        let standby_listener = TcpListener::from_std(dup).map_err(io)?;
        let mut registry = metrics::new_registry(config.role.as_str());
        self.metrics.register(&mut registry);
        let core = CoreState {
            role: config.role,
            started: Instant::now(),
            readiness: self.readiness.clone(),
            registry: Arc::new(registry),
            health_warnings: Arc::new(Vec::new()),
        };
        // A web replica that read the lease just before a takeover may still call here: tell it to
        // look again rather than answer 404.
        let standby_readiness = core.readiness.clone();
        let internal = Router::new().route(
            "/internal/{*rest}",
            axum::routing::any(move || {
                let r = standby_readiness.clone();
                async move {
                    http::ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        crate::web::control::NOT_LEADER,
                        r.warning(crate::leader::READY_LEADERSHIP)
                            .unwrap_or_else(|| {
                                "this poller stands by; another poller leads".to_owned()
                            }),
                    )
                    .retry_after(1)
                }
            }),
        );
        let router = http::finish(
            http::core_routes(core).merge(internal),
            self.http_metrics.clone(),
        );
        let stop = CancellationToken::new();
        let server = {
            let stop = stop.clone();
            let limits = http::serve::Limits::from_config(&config.server);
            let connections = self.connections.clone();
            tokio::spawn(async move {
                http::serve::serve(standby_listener, router, limits, connections, stop).await
            })
        };
        let out = until.await;
        stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
        Ok((listener, out))
    }
}
