//! Connection slots shared by the webhook and the admin port: a cap on open connections, the
//! time limits of one connection (first request, idle), and eviction of the longest idle
//! connection when every slot is taken, so clients that hold a connection without using it
//! cannot lock out one that has a request to make.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::watch,
    task::{AbortHandle, Id, JoinSet},
};

/// Time limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// For the TLS handshake, and again for the headers of the first request after it.
    pub header_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
}

/// What one connection is doing, read by its own task (idle timeout) and by the accept loop
/// (eviction). Updated twice per request: two uncontended atomic operations each.
#[derive(Debug)]
pub struct ConnState {
    opened: Instant,
    /// Requests being handled.
    active: AtomicUsize,
    /// Milliseconds after `opened` when the last request ended, plus one; 0 before any request.
    last_end_ms: AtomicU64,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// Marks a request as in progress until the returned guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Whether any request has been received on this connection.
    pub fn has_requested(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0 || self.last_end_ms.load(Ordering::Relaxed) > 0
    }

    /// Since when the connection has had no request in progress; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let ms = self.last_end_ms.load(Ordering::Relaxed);
        Some(self.opened + Duration::from_millis(ms.saturating_sub(1)))
    }

    /// How long the connection has had no request in progress (zero while one is).
    pub fn idle_for(&self) -> Duration {
        self.idle_since()
            .map_or(Duration::ZERO, |since| since.elapsed())
    }
}

/// A request in progress on a connection (see [`ConnState::request`]).
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        let ms = u64::try_from(state.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        state.last_end_ms.store(ms + 1, Ordering::Relaxed);
        state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a connection must have been without a request before a newcomer may take its
/// slot: a connection that just finished its handshake, or its last answer, may have a request
/// on the wire already.
const EVICT_AFTER: Duration = Duration::from_millis(250);

/// The open connections of one listener, at most `max`.
pub struct Slots {
    max: usize,
    tasks: JoinSet<()>,
    open: HashMap<Id, (Arc<ConnState>, AbortHandle)>,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            max,
            tasks: JoinSet::new(),
            open: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Whether every slot is taken.
    pub fn full(&self) -> bool {
        self.tasks.len() >= self.max
    }

    /// Whether a new connection can be taken: a slot is free, or one can be freed by closing
    /// an idle connection.
    pub fn can_accept(&self) -> bool {
        !self.full() || self.evictable().is_some()
    }

    /// The connection to close for a newcomer: one with no request in progress for
    /// [`EVICT_AFTER`], first those that never sent a request (silent, slow or still in the
    /// TLS handshake), each group oldest idle first.
    fn evictable(&self) -> Option<Id> {
        let now = Instant::now();
        self.open
            .iter()
            .filter_map(|(id, (state, _))| {
                let since = state.idle_since()?;
                (now.saturating_duration_since(since) >= EVICT_AFTER)
                    .then_some(((state.has_requested(), since), *id))
            })
            .min_by_key(|(key, _)| *key)
            .map(|(_, id)| id)
    }

    /// Runs `serve` for a new connection, closing the longest idle one first when every slot
    /// is taken. Returns whether a connection was closed for it.
    pub fn spawn<F>(&mut self, serve: impl FnOnce(Arc<ConnState>) -> F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut evicted = false;
        if self.full()
            && let Some(id) = self.evictable()
            && let Some((_, handle)) = self.open.remove(&id)
        {
            handle.abort();
            evicted = true;
        }
        let state = Arc::new(ConnState::new());
        let handle = self.tasks.spawn(serve(state.clone()));
        self.open.insert(handle.id(), (state, handle));
        evicted
    }

    /// Waits for a connection to end (`None` when none is open).
    pub async fn join_next(&mut self) -> Option<()> {
        let id = match self.tasks.join_next_with_id().await? {
            Ok((id, ())) => id,
            Err(e) => e.id(),
        };
        self.open.remove(&id);
        Some(())
    }

    /// Closes every connection at once.
    pub fn abort_all(&mut self) {
        self.tasks.abort_all();
    }
}

/// Serves one connection within `limits`: closed when no request arrives within the header
/// timeout, gracefully closed after the idle timeout without a request in progress (whatever
/// else moves on it, such as HTTP/2 PINGs), dropped if that does not finish within another
/// header timeout, and gracefully closed when `stop` turns true.
pub async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    state: &ConnState,
    limits: ConnLimits,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Ended<E>>
where
    C: Future<Output = Result<(), E>>,
{
    let first_request = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(first_request);
    let mut check = tokio::time::interval(
        (limits.idle_timeout.min(limits.header_timeout) / 4).max(Duration::from_millis(10)),
    );
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    let mut closing_idle = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result.map_err(Ended::Error),
            _ = stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                graceful(conn.as_mut());
            }
            () = &mut first_request, if !state.has_requested() => {
                return Err(Ended::NoRequest);
            }
            _ = check.tick() => {
                let idle = state.idle_for();
                if closing_idle && idle >= limits.idle_timeout + limits.header_timeout {
                    return Err(Ended::Idle);
                }
                if !draining && idle >= limits.idle_timeout {
                    draining = true;
                    closing_idle = true;
                    graceful(conn.as_mut());
                }
            }
        }
    }
}

/// Why [`drive`] ended a connection other than by its own end.
#[derive(Debug)]
pub enum Ended<E> {
    /// The connection failed.
    Error(E),
    /// No request arrived within the header timeout.
    NoRequest,
    /// An idle connection did not close in time after being asked to.
    Idle,
}
