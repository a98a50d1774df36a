//! Release notifications over Redis pub/sub, shared by all waiters of one `RedisLock`.
//!
//! One pub/sub connection per lock service carries every channel that has waiters. A waiter
//! registers (which subscribes and waits for Redis to confirm) *before* its failed attempt,
//! so a release between that attempt and the wait cannot be missed (Redisson #1763). Each
//! release message wakes one waiter of the process (or, on a *broadcast* channel such as a
//! read-write lock's, every waiter, since a writer's release lets all readers in); the rest
//! stay asleep instead of stampeding Redis. When the pub/sub connection is down, registration
//! says so and waiters poll.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{Mutex, Notify, oneshot};

use crate::topology::PubSubSource;

/// Each channel's waker, and whether a message wakes all its waiters.
type Wakers = HashMap<String, (Arc<Notify>, bool)>;

#[derive(Debug)]
pub(crate) struct Notifier {
    /// Where the pub/sub connection goes (with Sentinel, the current primary).
    source: PubSubSource,
    connect_timeout: Duration,
    /// Serializes (un)subscribe commands with the reference counts they depend on.
    control: Mutex<Control>,
    /// Read by the message task without awaiting: each channel's waker, and whether a message
    /// wakes every waiter (broadcast) or one.
    wakers: Arc<StdMutex<Wakers>>,
}

#[derive(Default)]
struct Control {
    /// The subscription sink, whether its connection is alive, and the stop signal of its
    /// message task (dropped with the notifier, so the task and connection end with it).
    conn: Option<(PubSubSink, Arc<AtomicBool>, oneshot::Sender<()>)>,
    refs: HashMap<String, usize>,
}

impl Control {
    /// Whether the pub/sub connection is up.
    fn alive(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|(_, alive, _)| alive.load(Ordering::Acquire))
    }

    /// Whether a waiter already holds a subscription to `channel` on the live connection.
    fn listening(&self, channel: &str) -> bool {
        self.refs.get(channel).is_some_and(|n| *n > 0) && self.alive()
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("connected", &self.conn.is_some())
            .field("channels", &self.refs.len())
            .finish()
    }
}

/// A waiter's interest in one channel; dropping it unsubscribes when it was the last.
#[derive(Debug)]
pub(crate) struct Registration {
    notifier: Arc<Notifier>,
    channel: String,
    pub(crate) notify: Arc<Notify>,
    /// Whether Redis confirmed the subscription; without it, only polling wakes the waiter.
    pub(crate) subscribed: bool,
}

impl Notifier {
    pub(crate) fn new(source: PubSubSource, connect_timeout: Duration) -> Self {
        Self {
            source,
            connect_timeout,
            control: Mutex::new(Control::default()),
            wakers: Arc::new(StdMutex::new(HashMap::new())),
        }
    }

    pub(crate) async fn register(self: &Arc<Self>, channel: &str, broadcast: bool) -> Registration {
        // Under the control lock, so a concurrent last release cannot remove the waker after
        // we took it.
        let mut control = self.control.lock().await;
        // Another waiter of this channel holds a confirmed subscription on the live
        // connection: no second SUBSCRIBE round trip (it was one per contended acquire).
        let already = control.listening(channel);
        let mut registration = self.add(&mut control, channel, broadcast);
        if !already {
            registration.subscribed = self.subscribe(&mut control, channel).await;
        }
        registration
    }

    /// A registration for `channel` at no network cost, when another waiter of this process
    /// already holds a live subscription to it; `None` otherwise. A waiter that registers
    /// before its first attempt needs no second attempt to be sure it misses no release.
    pub(crate) async fn register_if_live(
        self: &Arc<Self>,
        channel: &str,
        broadcast: bool,
    ) -> Option<Registration> {
        let mut control = self.control.lock().await;
        control
            .listening(channel)
            .then(|| self.add(&mut control, channel, broadcast))
    }

    /// Counts a waiter of `channel` (under the control lock) and hands it the channel's
    /// waker; `subscribed` says whether the subscription was already live.
    fn add(
        self: &Arc<Self>,
        control: &mut Control,
        channel: &str,
        broadcast: bool,
    ) -> Registration {
        let subscribed = control.listening(channel);
        let notify = {
            let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
            wakers
                .entry(channel.to_owned())
                .or_insert_with(|| (Arc::new(Notify::new()), broadcast))
                .0
                .clone()
        };
        *control.refs.entry(channel.to_owned()).or_insert(0) += 1;
        Registration {
            notifier: self.clone(),
            channel: channel.to_owned(),
            notify,
            subscribed,
        }
    }

    /// Subscribes `channel` on a live connection, connecting (and re-subscribing every channel
    /// that has waiters) when there is none.
    async fn subscribe(&self, control: &mut Control, channel: &str) -> bool {
        if !control.alive() {
            control.conn = None;
            let Some(conn) = self.connect().await else {
                return false;
            };
            control.conn = Some(conn);
            let others: Vec<String> = control.refs.keys().cloned().collect();
            if let Some((sink, _, _)) = control.conn.as_mut() {
                for other in others.iter().filter(|c| *c != channel) {
                    let _ = tokio::time::timeout(self.connect_timeout, sink.subscribe(other)).await;
                }
            }
        }
        let Some((sink, _, _)) = control.conn.as_mut() else {
            return false;
        };
        match tokio::time::timeout(self.connect_timeout, sink.subscribe(channel)).await {
            Ok(Ok(())) => true,
            _ => {
                control.conn = None;
                false
            }
        }
    }

    async fn connect(&self) -> Option<(PubSubSink, Arc<AtomicBool>, oneshot::Sender<()>)> {
        let pubsub = match tokio::time::timeout(self.connect_timeout, async {
            self.source.client().await?.get_async_pubsub().await
        })
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(error)) => {
                tracing::debug!(%error, "pub/sub connection failed; waiters will poll");
                return None;
            }
            Err(_) => return None,
        };
        let (sink, mut stream) = pubsub.split();
        let alive = Arc::new(AtomicBool::new(true));
        let wakers = self.wakers.clone();
        let flag = alive.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    _ = &mut stopped => None,
                };
                let Some(msg) = msg else { break };
                let waker = wakers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(msg.get_channel_name())
                    .cloned();
                match waker {
                    Some((n, true)) => n.notify_waiters(),
                    Some((n, false)) => n.notify_one(),
                    None => {}
                }
            }
            flag.store(false, Ordering::Release);
            tracing::debug!("pub/sub connection closed; waiters poll until it is back");
        });
        Some((sink, alive, stop))
    }

    async fn release(self: Arc<Self>, channel: String) {
        let mut control = self.control.lock().await;
        let last = match control.refs.get_mut(&channel) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if !last {
            return;
        }
        control.refs.remove(&channel);
        self.wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&channel);
        if let Some((sink, _, _)) = control.conn.as_mut() {
            let _ = tokio::time::timeout(self.connect_timeout, sink.unsubscribe(&channel)).await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let notifier = self.notifier.clone();
        let channel = std::mem::take(&mut self.channel);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(notifier.release(channel));
        }
    }
}
