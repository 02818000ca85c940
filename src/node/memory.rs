//! Giving freed memory back to the system. glibc's allocator keeps what
//! sessions freed in its arenas (one per thread) for reuse, so after a
//! wave of logouts the process stays as large as at its peak. When the
//! number of sessions has fallen well below its recent peak, the arenas
//! are trimmed (`malloc_trim`), on a blocking thread.

use std::sync::Arc;
use std::time::Duration;

use crate::node::server::ServerCtx;

const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Sessions that must have gone since the peak before a trim is worth it.
const GONE_BEFORE_TRIM: usize = 500;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only returns free pages of glibc's own arenas to
    // the kernel; it takes no pointers and is safe to call at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Watch the session count; trim after it falls far below its peak.
pub async fn watch(ctx: Arc<ServerCtx>) {
    let mut peak = 0usize;
    let mut stopped = ctx.replicator.cluster().stopped();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stopped.changed() => return,
        }
        let now = ctx.router.count();
        peak = peak.max(now);
        if peak - now >= GONE_BEFORE_TRIM {
            let took = std::time::Instant::now();
            let _ = tokio::task::spawn_blocking(trim).await;
            tracing::info!(
                sessions = now,
                peak,
                ms = took.elapsed().as_millis() as u64,
                "returned freed memory to the system"
            );
            peak = now;
        }
    }
}
