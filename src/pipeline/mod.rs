//! The delivery pipeline's policy and memory, apart from PagerDuty's wire format:
//!
//! - [`incidents`]: [`Incidents`], the one owner of "which incident PagerDuty holds for each
//!   alert, on which route", and of the open alerts the API lists. Seeded from the state
//!   store's ledger at startup, written only by the dispatcher.
//! - [`decide`]: the intake policy (trigger, update, clear, cancel, route change) as a pure
//!   function with a table test: what PagerDuty must hear next about one alert.
//! - [`silence`]: maintenance windows: their matchers and validation, and [`Silences`], the
//!   set the dispatcher checks at intake (durable in the state store).
//! - [`flap`]: flap damping: the recent raise/clear times of alerts that clear often, and the
//!   resolves held until a flapping alert settles (kept by the dispatcher, not durable).
//!
//! The dispatcher (`pagerduty::dispatcher`) does the I/O around them: the outbox, per-key
//! order, the rate limit per routing key, and the sends.

pub mod decide;
pub mod flap;
pub mod incidents;
pub mod silence;

pub use decide::{Decision, Flap, Holding, Incoming, Queued, Routes, Silence, Step, Why, decide};
pub use flap::{FlapSettings, Flaps};
pub use incidents::Incidents;
pub use silence::Silences;
