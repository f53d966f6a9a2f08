//! Tests that must not overlap inside one test binary.
//!
//! Each file of `tests/` used to be a binary of its own, and Cargo runs test binaries one
//! after the other: a test that starts `serve` processes (or `serve` in-process, the demo,
//! loadgen) never ran beside another such test. Now the service tests share one binary
//! and libtest runs its tests on parallel threads; run side by side on 2 cores they
//! starve each other's timing (a kill meant to land mid-stream lands after it, a
//! propagation or a deadline is missed). So:
//!
//! - a heavy test (it runs the service) holds [`exclusive`] for its whole run, after its
//!   servers were required (a skipped test takes nothing);
//! - a light test that used to share its binary only with other light tests (the bus
//!   smoke tests, the proxy self-tests) holds [`shared`]: light tests still run side by
//!   side, never beside a heavy one.
//!
//! The lock is a tokio `RwLock`: it is not poisoned by a failing test (the next test
//! still runs), and it is fair (a waiting heavy test is not starved by light ones).

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static SERVICE: RwLock<()> = RwLock::const_new(());

/// Alone among the tests of this binary that take [`exclusive`] or [`shared`].
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERVICE.write().await
}

/// [`exclusive`] for a synchronous test (`#[test]`, no runtime).
pub fn exclusive_blocking() -> RwLockWriteGuard<'static, ()> {
    SERVICE.blocking_write()
}

/// Beside other [`shared`] holders, never beside an [`exclusive`] one.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    SERVICE.read().await
}

/// The start of a heavy service test: requires the broker and PostgreSQL (a test that
/// cannot reach them fails under `CI=true`, else skips: [`super::require`]), then waits
/// for [`exclusive`]. `None`: skip the test.
///
/// ```ignore
/// let Some(_serial) = serial::service_test().await else {
///     return;
/// };
/// ```
pub async fn service_test() -> Option<RwLockWriteGuard<'static, ()>> {
    if !super::require_broker() || !super::require_postgres() {
        return None;
    }
    Some(exclusive().await)
}
