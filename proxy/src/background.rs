//! Work beside the data path — log searches, exports, the console's counts
//! — on a thread of its own at a low CPU priority (nice 10 on Linux), so a
//! year-long search on a busy gateway takes the cores the proxy leaves
//! idle instead of competing with the requests. A thread per task (the
//! callers bound how many run at once) keeps the lowered priority from
//! leaking into the runtime's shared blocking pool.

use std::future::Future;

/// Nice value of background threads (0 is normal, 19 the lowest).
pub const NICE: i32 = 10;

/// Runs `f` on a new low-priority thread named `name`; `Err` if the thread
/// could not start or `f` panicked.
pub fn run<F, T>(name: &str, f: F) -> impl Future<Output = Result<T, String>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a background thread: {e}"));
    async move {
        started?;
        rx.await
            .map_err(|_| "the background task stopped unexpectedly".to_string())
    }
}

/// Lowers the calling thread's CPU priority (Linux: nice is per thread).
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread (who = 0) with a valid
    // value; it only changes this thread's scheduling weight.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[tokio::test]
    async fn runs_at_low_priority() {
        // SAFETY: reads the calling thread's nice value.
        let nice = super::run("bg-test", || unsafe {
            libc::getpriority(libc::PRIO_PROCESS, 0)
        })
        .await
        .unwrap();
        assert!(nice >= super::NICE, "nice {nice}");
        let e = super::run("bg-panic", || -> u8 { panic!("boom") }).await;
        assert!(e.unwrap_err().contains("stopped"));
    }
}
