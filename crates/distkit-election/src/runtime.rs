//! The tokio runtime: one task owns the core, its timers, the vote store and a transport.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use distkit_core::{Error, LeaderElector, Leadership, NodeId};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::{Config, Election, Envelope, Message, Output, VoteStore};

/// Carries messages to peers. Delivery is best effort: the protocol tolerates loss, so a
/// transport reports failures for logs and metrics but never retries on its own.
#[async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// Sends `envelope` to `envelope.to`.
    ///
    /// # Errors
    ///
    /// When the peer cannot be reached or refuses the message.
    async fn send(&self, envelope: Envelope) -> Result<(), Error>;
}

enum Command {
    Stop,
    Resign(oneshot::Sender<()>),
    Transfer(NodeId, oneshot::Sender<Result<(), Error>>),
}

/// How many messages may wait for one peer before new ones are dropped (as the network may).
const PEER_QUEUE: usize = 64;

/// A handle that feeds incoming messages to a running [`Elector`]; the HTTP router holds
/// one.
#[derive(Clone, Debug)]
pub struct Inbox {
    id: NodeId,
    peers: Arc<[NodeId]>,
    tx: mpsc::Sender<(NodeId, Message)>,
}

impl Inbox {
    /// This node's id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Delivers a message. Envelopes addressed elsewhere, from strangers or with a term above
    /// [`Term::MAX`](distkit_core::Term::MAX) are refused before they reach the core; a full
    /// queue drops the message (as the network may).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a wrong addressee, an unknown sender or a term out of
    /// range; [`Error::Unavailable`] when the elector has stopped.
    pub fn deliver(&self, envelope: Envelope) -> Result<(), Error> {
        if envelope.to != self.id {
            return Err(Error::invalid_input(
                "envelope",
                format!("addressed to {}, this node is {}", envelope.to, self.id),
            ));
        }
        if !self.peers.contains(&envelope.from) {
            return Err(Error::invalid_input(
                "envelope",
                format!("{} is not a member of this election", envelope.from),
            ));
        }
        if !envelope.msg.term().is_valid() {
            return Err(Error::invalid_input(
                "envelope",
                format!(
                    "term {} is above the largest valid term",
                    envelope.msg.term()
                ),
            ));
        }
        match self.tx.try_send((envelope.from, envelope.msg)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Unavailable {
                endpoint: self.id.to_string(),
                reason: "the elector has stopped".into(),
                source: None,
            }),
        }
    }
}

/// A running election participant: implements [`LeaderElector`].
///
/// # Who owns the background work
///
/// [`Elector::start`] spawns one driver task, which owns the core, the vote store and one
/// sender task per peer (each with a queue of 64 messages; a full queue drops, as the network
/// may). Every clone of the `Elector` shares them. [`shutdown`](Self::shutdown) stops the
/// driver and returns once it and every sender task have ended. Dropping the last handle
/// without `shutdown` aborts them instead (at their next await point; this needs no runtime,
/// so it works in a `Drop` anywhere). Neither resigns: call
/// [`resign`](LeaderElector::resign) first for a clean hand-over.
#[derive(Clone, Debug)]
pub struct Elector {
    id: NodeId,
    leadership: watch::Receiver<Leadership>,
    commands: mpsc::Sender<Command>,
    lease_until_us: Arc<AtomicU64>,
    epoch: Instant,
    inbox: Inbox,
    owner: Arc<TaskOwner>,
}

/// Aborts the driver when the last handle goes without a shutdown.
#[derive(Debug)]
struct TaskOwner {
    task: tokio::task::AbortHandle,
    ended: watch::Receiver<bool>,
}

impl Drop for TaskOwner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Marks the driver ended however it ends: returned, aborted or panicked.
struct EndedOnDrop(watch::Sender<bool>);

impl Drop for EndedOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Elector {
    /// Loads the vote store and starts the election task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the vote store cannot be read (a corrupt file is never reset),
    /// [`Error::Unavailable`] when called outside a tokio runtime.
    pub fn start(
        cfg: Config,
        store: Arc<dyn VoteStore>,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::Unavailable {
            endpoint: cfg.id().to_string(),
            reason: "an elector needs a tokio runtime to run on (start it inside one)".into(),
            source: Some(Arc::new(e)),
        })?;
        let hs = store.load()?;
        let epoch = Instant::now();
        let core = Election::new(cfg.clone(), hs, Duration::ZERO, rand::rng().random());
        let (lead_tx, lead_rx) = watch::channel(core.leadership());
        let (msg_tx, msg_rx) = mpsc::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (ended_tx, ended_rx) = watch::channel(false);
        let lease_until_us = Arc::new(AtomicU64::new(0));
        let inbox = Inbox {
            id: cfg.id().clone(),
            peers: cfg.peers().to_vec().into(),
            tx: msg_tx,
        };
        let driver = Driver {
            core,
            id: cfg.id().clone(),
            store,
            transport,
            senders: HashMap::new(),
            tasks: JoinSet::new(),
            leadership: lead_tx,
            lease_until_us: lease_until_us.clone(),
            epoch,
        };
        let ended = EndedOnDrop(ended_tx);
        let task = runtime.spawn(async move {
            let _ended = ended;
            driver.run(msg_rx, cmd_rx).await;
        });
        Ok(Self {
            id: cfg.id().clone(),
            leadership: lead_rx,
            commands: cmd_tx,
            lease_until_us,
            epoch,
            inbox,
            owner: Arc::new(TaskOwner {
                task: task.abort_handle(),
                ended: ended_rx,
            }),
        })
    }

    /// The handle to feed incoming messages.
    #[must_use]
    pub fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    /// Whether this node leads and a majority acknowledged it recently enough that no other
    /// node can have been elected since (the lease is the minimum election timeout less the
    /// drift bound). Use it before serving reads that must not be stale.
    #[must_use]
    pub fn is_leader_with_lease(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.is_leader() && now < self.lease_until_us.load(Ordering::Acquire)
    }

    /// Hands leadership to `to` (a peer); this node gives up its lease at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `to` is not a peer; [`Error::Unavailable`] when the task
    /// has stopped.
    pub async fn transfer_to(&self, to: &NodeId) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Transfer(to.clone(), tx))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Stops the election (a crash, as far as the peers can tell: resign first for a clean
    /// hand-over) and returns once the driver task and every peer sender task have ended.
    /// Calling it again, or from several clones, returns once they have ended.
    pub async fn shutdown(&self) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.commands.try_send(Command::Stop) {
            // A full command queue cannot keep the stop out: abort.
            self.owner.task.abort();
        }
        let mut ended = self.owner.ended.clone();
        let _ = ended.wait_for(|e| *e).await;
    }

    /// Whether the driver task has ended (after [`shutdown`](Self::shutdown), a failed vote
    /// write, or an abort).
    #[must_use]
    pub fn has_ended(&self) -> bool {
        *self.owner.ended.borrow()
    }

    fn stopped(&self) -> Error {
        Error::Unavailable {
            endpoint: self.id.to_string(),
            reason: "the elector has stopped".into(),
            source: None,
        }
    }
}

#[async_trait]
impl LeaderElector for Elector {
    fn id(&self) -> &NodeId {
        &self.id
    }

    fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    async fn resign(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Resign(tx))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())
    }
}

/// How a step's messages leave: queued to the peer's sender (the normal case: the protocol
/// tolerates loss and the loop must not wait), or delivered before the command returns (a
/// hand-over must reach its target before a shutting-down process exits).
#[derive(Clone, Copy)]
enum Delivery {
    Queue,
    Await,
}

/// A message for one peer's sender task, with an acknowledgement when the caller waits.
type Outgoing = (Message, Option<oneshot::Sender<()>>);

struct Driver {
    core: Election,
    id: NodeId,
    store: Arc<dyn VoteStore>,
    transport: Arc<dyn Transport>,
    /// One bounded queue per peer, each drained by one task in `tasks`.
    senders: HashMap<NodeId, mpsc::Sender<Outgoing>>,
    tasks: JoinSet<()>,
    leadership: watch::Sender<Leadership>,
    lease_until_us: Arc<AtomicU64>,
    epoch: Instant,
}

impl Driver {
    async fn run(
        mut self,
        messages: mpsc::Receiver<(NodeId, Message)>,
        commands: mpsc::Receiver<Command>,
    ) {
        self.drive(messages, commands).await;
        // Close the queues and wait for the senders; an in-flight request ends at the
        // transport's own timeout, so bound the wait and abort the rest.
        self.senders.clear();
        let tasks = &mut self.tasks;
        let drained = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(1), drained)
            .await
            .is_err()
        {
            self.tasks.shutdown().await;
        }
    }

    async fn drive(
        &mut self,
        mut messages: mpsc::Receiver<(NodeId, Message)>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        loop {
            let deadline = self
                .epoch
                .checked_add(self.core.next_deadline())
                .unwrap_or_else(far_future);
            // Drawn before waiting: the thread's generator must not be held across an await.
            let r: f64 = rand::rng().random();
            let out = tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => {
                    let now = self.now();
                    self.core.tick(now, r)
                }
                m = messages.recv() => {
                    let Some((from, msg)) = m else { return };
                    let now = self.now();
                    match self.core.step(now, &from, msg, r) {
                        Ok(out) => out,
                        Err(e) => {
                            tracing::debug!(error = %e, "message refused");
                            continue;
                        }
                    }
                }
                c = commands.recv() => {
                    let now = self.now();
                    match c {
                        None | Some(Command::Stop) => return,
                        Some(Command::Resign(done)) => {
                            let out = self.core.resign(now, r);
                            if !self.apply(out, Delivery::Await).await {
                                return;
                            }
                            let _ = done.send(());
                            continue;
                        }
                        Some(Command::Transfer(to, done)) => {
                            match self.core.transfer(now, &to, r) {
                                Ok(out) => {
                                    if !self.apply(out, Delivery::Await).await {
                                        return;
                                    }
                                    let _ = done.send(Ok(()));
                                }
                                Err(e) => {
                                    let _ = done.send(Err(Error::invalid_input("transfer target", e.to_string())));
                                }
                            }
                            continue;
                        }
                    }
                }
            };
            if !self.apply(out, Delivery::Queue).await {
                return;
            }
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The queue of `to`'s sender task, starting the task on first use.
    fn sender(&mut self, to: &NodeId) -> mpsc::Sender<Outgoing> {
        if let Some(tx) = self.senders.get(to) {
            return tx.clone();
        }
        let (tx, mut rx) = mpsc::channel::<Outgoing>(PEER_QUEUE);
        let (from, peer, transport) = (self.id.clone(), to.clone(), self.transport.clone());
        self.tasks.spawn(async move {
            while let Some((msg, ack)) = rx.recv().await {
                let env = Envelope {
                    from: from.clone(),
                    to: peer.clone(),
                    msg,
                };
                if let Err(e) = transport.send(env).await {
                    tracing::trace!(error = %e, peer = %peer, "election message not delivered");
                }
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
            }
        });
        self.senders.insert(to.clone(), tx.clone());
        tx
    }

    /// Persists, then sends, then publishes. Returns false when the node must stop (its
    /// vote could not be made durable: answering anyway could mean two votes in a term).
    async fn apply(&mut self, out: Output, delivery: Delivery) -> bool {
        if let Some(hs) = out.persist {
            let store = self.store.clone();
            let saved = tokio::task::spawn_blocking(move || store.save(&hs)).await;
            match saved {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot persist the vote; stopping this elector");
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "vote store task failed; stopping this elector");
                    return false;
                }
            }
        }
        let mut acks = Vec::new();
        for (to, msg) in out.send {
            let queue = self.sender(&to);
            match delivery {
                Delivery::Queue => {
                    if queue.try_send((msg, None)).is_err() {
                        tracing::trace!(peer = %to, "peer queue full; election message dropped");
                    }
                }
                Delivery::Await => {
                    let (tx, rx) = oneshot::channel();
                    if queue.send((msg, Some(tx))).await.is_ok() {
                        acks.push(rx);
                    }
                }
            }
        }
        futures_util::future::join_all(acks).await;
        let lease = self
            .core
            .lease_expiry()
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.lease_until_us.store(lease, Ordering::Release);
        if let Some(l) = out.leadership {
            tracing::info!(term = l.term.get(), role = %l.role, leader = l.leader.as_ref().map_or("none", NodeId::as_str), "leadership changed");
            self.leadership.send_replace(l);
        }
        true
    }
}

/// A deadline far enough away to mean "never" (about 30 years), for a clock value that
/// overflows `Instant`.
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(30 * 365 * 24 * 3600))
        .unwrap_or(now)
}
