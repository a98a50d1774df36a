//! The tokio runtime: one task owns the core, its timers, the vote store and a transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use distkit_core::{Error, LeaderElector, Leadership, NodeId};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Config, Election, Message, Output, VoteStore};

/// A message with its sender and addressee, as it travels between peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender.
    pub from: NodeId,
    /// The addressee.
    pub to: NodeId,
    /// The message.
    pub msg: Message,
}

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

    /// Delivers a message. Envelopes addressed elsewhere or from strangers are refused
    /// before they reach the core; a full queue drops the message (as the network may).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a wrong addressee or an unknown sender;
    /// [`Error::Unavailable`] when the elector has stopped.
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
/// Dropping the last handle stops the task (without resigning: call
/// [`resign`](LeaderElector::resign) first for a clean hand-over).
#[derive(Clone, Debug)]
pub struct Elector {
    id: NodeId,
    leadership: watch::Receiver<Leadership>,
    commands: mpsc::Sender<Command>,
    lease_until_us: Arc<AtomicU64>,
    epoch: Instant,
    inbox: Inbox,
}

impl Elector {
    /// Loads the vote store and starts the election task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the vote store cannot be read (a corrupt file is never reset).
    pub fn start(
        cfg: Config,
        store: Arc<dyn VoteStore>,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, Error> {
        let hs = store.load()?;
        let epoch = Instant::now();
        let core = Election::new(cfg.clone(), hs, Duration::ZERO, rand::rng().random());
        let (lead_tx, lead_rx) = watch::channel(core.leadership());
        let (msg_tx, msg_rx) = mpsc::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
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
            leadership: lead_tx,
            lease_until_us: lease_until_us.clone(),
            epoch,
        };
        tokio::spawn(driver.run(msg_rx, cmd_rx));
        Ok(Self {
            id: cfg.id().clone(),
            leadership: lead_rx,
            commands: cmd_tx,
            lease_until_us,
            epoch,
            inbox,
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

    /// Stops the election task at once (a crash, as far as the peers can tell). Resign first
    /// for a clean hand-over.
    pub async fn stop(&self) {
        let _ = self.commands.send(Command::Stop).await;
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

/// How a step's messages leave: in the background (the normal case: the protocol tolerates
/// loss and the loop must not wait), or before the command returns (a hand-over must reach its
/// target before a shutting-down process exits).
#[derive(Clone, Copy)]
enum Delivery {
    Spawn,
    Await,
}

struct Driver {
    core: Election,
    id: NodeId,
    store: Arc<dyn VoteStore>,
    transport: Arc<dyn Transport>,
    leadership: watch::Sender<Leadership>,
    lease_until_us: Arc<AtomicU64>,
    epoch: Instant,
}

impl Driver {
    async fn run(
        mut self,
        mut messages: mpsc::Receiver<(NodeId, Message)>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        loop {
            let deadline = self.epoch + self.core.next_deadline();
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
            if !self.apply(out, Delivery::Spawn).await {
                return;
            }
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
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
        let mut inline = Vec::new();
        for (to, msg) in out.send {
            let transport = self.transport.clone();
            let env = Envelope {
                from: self.id.clone(),
                to,
                msg,
            };
            let send = async move {
                if let Err(e) = transport.send(env).await {
                    tracing::trace!(error = %e, "election message not delivered");
                }
            };
            match delivery {
                Delivery::Spawn => {
                    tokio::spawn(send);
                }
                Delivery::Await => inline.push(send),
            }
        }
        futures_util::future::join_all(inline).await;
        let lease = self
            .core
            .lease_expiry()
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.lease_until_us.store(lease, Ordering::Release);
        if let Some(l) = out.leadership {
            tracing::info!(term = l.term.get(), role = %l.role, leader = ?l.leader.as_ref().map(NodeId::as_str), "leadership changed");
            self.leadership.send_replace(l);
        }
        true
    }
}
