//! The unit every component hands to the application: a background future that returns soon
//! after its cancellation token fires. A leaf type (it imports nothing of ours), so that the
//! components do not depend on `app`, which assembles them.

use std::future::Future;
use std::pin::Pin;

/// A background task of a role. It must return soon after its token is cancelled.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
