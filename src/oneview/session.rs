//! The one OneView session the bridge keeps, and the gate that makes logins single-flight and
//! paced.
//!
//! OneView has no "is my token still valid" call: a session is known dead only when a request
//! gets 401. So the client keeps one session, replaces it proactively after
//! `oneview.session_refresh`, and on a 401 re-logs in once and replays. Many requests can hit
//! the same 401 at once; they all ask for a session newer than the generation that failed, and
//! the login lock makes the first one log in while the others wait and reuse its result.
//! After a failed login the gate refuses new attempts until a jittered, growing delay has
//! passed, so nothing (poller or write-back) can hammer an appliance that rejects us.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use secrecy::SecretString;
use tokio::time::Instant;

/// A logged-in session. The id is secret: it is never logged or put in an error.
pub(crate) struct Session {
    pub(crate) id: SecretString,
    /// Increases with every login; a 401 names the generation it happened with.
    pub(crate) generation: u64,
    pub(crate) since: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &"<redacted>")
            .field("generation", &self.generation)
            .finish()
    }
}

/// Login pacing after failures.
pub(crate) struct LoginGate {
    builder: ExponentialBuilder,
    backoff: Option<ExponentialBackoff>,
    pub(crate) blocked_until: Option<Instant>,
    pub(crate) last_error: Option<String>,
}

impl LoginGate {
    pub(crate) fn new() -> Self {
        Self {
            builder: ExponentialBuilder::new()
                .with_jitter()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(300))
                .without_max_times(),
            backoff: None,
            blocked_until: None,
            last_error: None,
        }
    }

    pub(crate) fn succeeded(&mut self) {
        self.backoff = None;
        self.blocked_until = None;
        self.last_error = None;
    }

    /// Records a failure and returns how long logins are now refused.
    pub(crate) fn failed(&mut self, error: String) -> Duration {
        let builder = self.builder;
        let delay = self
            .backoff
            .get_or_insert_with(|| builder.build())
            .next()
            .unwrap_or(Duration::from_secs(300));
        self.blocked_until = Some(Instant::now() + delay);
        self.last_error = Some(error);
        delay
    }

    /// Time left before the next login may be tried.
    pub(crate) fn wait_left(&self) -> Option<Duration> {
        let until = self.blocked_until?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }
}

/// The current session plus the login lock.
pub(crate) struct SessionSlot {
    current: Mutex<Option<Arc<Session>>>,
    /// Held while logging in; also guards the pacing state.
    pub(crate) gate: tokio::sync::Mutex<LoginGate>,
    next_generation: Mutex<u64>,
}

impl SessionSlot {
    pub(crate) fn new() -> Self {
        Self {
            current: Mutex::new(None),
            gate: tokio::sync::Mutex::new(LoginGate::new()),
            next_generation: Mutex::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Session>>> {
        // Only an Arc is swapped under this lock; a panic cannot leave it inconsistent.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn current(&self) -> Option<Arc<Session>> {
        self.lock().clone()
    }

    pub(crate) fn install(&self, id: SecretString) -> Arc<Session> {
        let generation = {
            let mut g = self
                .next_generation
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let v = *g;
            *g += 1;
            v
        };
        let s = Arc::new(Session {
            id,
            generation,
            since: Instant::now(),
        });
        *self.lock() = Some(s.clone());
        s
    }

    pub(crate) fn take(&self) -> Option<Arc<Session>> {
        self.lock().take()
    }

    /// Forgets the session if it is still the one of `generation`.
    pub(crate) fn drop_generation(&self, generation: u64) {
        let mut g = self.lock();
        if g.as_ref().is_some_and(|s| s.generation == generation) {
            *g = None;
        }
    }
}
