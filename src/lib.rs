//! # oneview-pagerduty-bridge
//!
//! Watches HPE OneView appliances and pages on-call engineers through PagerDuty Events API v2.
//!
//! ## Layout
//! Leaves first; each module's own docs say what it owns.
//! - [`model`]: the domain types both sides share (OneView `Alert`, `AlertKey`, `AlertChange`).
//! - [`config`]: layered configuration (defaults < TOML < `BRIDGE_*` env), validation that
//!   reports every problem at once, secrets through [`secret`].
//! - [`oneview`]: the OneView client, session manager and incremental poller, which turns
//!   `/rest/alerts` into [`model::AlertChange`]s.
//! - [`pipeline`]: which incident PagerDuty holds for each alert, on which route, and the
//!   intake policy (a pure function with a table test) deciding what PagerDuty must hear next.
//! - [`pagerduty`]: the Events API v2 side: event building, routing, the durable queue with
//!   per-alert order and the rate limit per routing key, the sender and its retry table.
//! - [`change_events`]: finished OneView tasks as PagerDuty Change Events, with a durable
//!   watermark per appliance.
//! - [`state`]: durable delivery state (ledger with routes, outbox, watermarks, dead letters) in
//!   memory or in a redb file, written by one group-commit thread.
//! - [`web`]: the public API, PagerDuty webhooks and their write-back to OneView, the status
//!   page; the internal API between web replicas and the poller.
//! - [`http`]: the axum surface every role serves (`/health`, `/ready`, `/metrics`, request
//!   ids, JSON errors).
//! - [`alloc`]: hands freed heap pages back to the system (glibc `malloc_trim`).
//! - [`metrics`], [`readiness`], [`telemetry`], [`recent`]: the operational plumbing every part
//!   shares; [`task`]: the background-task type every component hands to [`app`].
//! - [`app`]: assembles a role (`all`, `poller`, `web`) from the parts above and runs it until
//!   the shutdown token fires, then drains.
//! - [`sim`]: the OneView and PagerDuty simulators (tests, benchmarks, `demo`, `simulate`).
//! - [`cli`], [`commands`], [`demo`]: the command line that `main` parses and its subcommands.
//!
//! `main.rs` only parses the command line, installs logging, maps signals to a
//! `CancellationToken` and calls [`App::build`] / [`App::run`]; tests use the same two calls.

pub mod alloc;
pub mod app;
pub mod change_events;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod oneview;
pub mod pagerduty;
pub mod pipeline;
pub mod readiness;
pub mod recent;
pub mod secret;
pub mod sim;
pub mod state;
pub mod task;
pub mod telemetry;
pub mod web;

pub use app::App;
