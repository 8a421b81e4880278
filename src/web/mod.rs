//! The web role's inbound side: PagerDuty webhook signatures, API tokens, abuse limits.

pub mod auth;
pub mod signature;
