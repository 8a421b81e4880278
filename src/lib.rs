//! # oneview-pagerduty-bridge
//!
//! Watches HPE OneView appliances and pages on-call engineers through PagerDuty Events API v2.
//!
//! ## Layout
//! - [`config`]: layered configuration (defaults < TOML < `BRIDGE_*` env), validation that
//!   reports every problem at once, secrets through [`secret`].
//! - [`app`]: assembles a role (`all`, `poller`, `web`) from the parts below and runs it until
//!   the shutdown token fires, then drains.
//! - [`http`]: the axum surface (`/health`, `/ready`, `/metrics`, request ids, JSON errors).
//! - [`metrics`], [`readiness`], [`telemetry`]: the operational plumbing every part shares.
//! - [`state`]: durable delivery state (ledger, outbox, watermarks, dead letters) in memory or
//!   in a redb file.
//! - [`cli`]: the command line that `main` parses.
//!
//! `main.rs` only parses the command line, installs logging, maps signals to a
//! `CancellationToken` and calls [`App::build`] / [`App::run`]; tests use the same two calls.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod http;
pub mod metrics;
pub mod model;
pub mod oneview;
pub mod pagerduty;
pub mod readiness;
pub mod recent;
pub mod secret;
pub mod sim;
pub mod state;
pub mod task;
pub mod telemetry;
pub mod web;

pub use app::App;
