//! `LeaseElection`: leadership as a Redis lease, for teams that already run Redis.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use distkit_core::{
    AcquireOptions, DistributedLock, Error, LeaderElector, Leadership, NodeId, Role, Term,
};
use distkit_dlock::RedisLock;
use redis::AsyncCommands;
use tokio::sync::{Notify, watch};

/// Default lease: short, so a crashed leader is replaced in well under a second.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(600);

/// Leader election over one Redis lock per election group.
///
/// Every member keeps trying to take the group's lock (waiting on the release channel, and
/// waking at the holder's expiry); the holder leads, renews through the watchdog every
/// `lease / 3`, and steps down the moment a renewal fails or finds the lock gone. The lock's
/// fencing token is the [`Term`], so it strictly increases from leader to leader and can fence
/// the leader's writes. Followers learn the leader's id from a companion key the leader writes.
///
/// A crashed leader is replaced when its lease runs out (600 ms by default, not the 15 s of
/// Kubernetes' defaults); a resigning leader releases at once and a waiter takes over within
/// a round trip or two. Dropping the last handle stops campaigning and releases the lease.
#[derive(Clone, Debug)]
pub struct LeaseElection {
    id: NodeId,
    leadership: watch::Receiver<Leadership>,
    publish: Arc<watch::Sender<Leadership>>,
    resign: Arc<Notify>,
    abandon: Arc<Notify>,
    task: Arc<Campaigning>,
}

/// Aborts the campaign when the last handle goes (a dropped lock guard releases the lease).
#[derive(Debug)]
struct Campaigning(tokio::task::JoinHandle<()>);

impl Drop for Campaigning {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LeaseElection {
    /// Joins election group `group` on the Redis server at `url` as `id`, with `lease` as the
    /// lock's TTL, and starts campaigning on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad URL, group name or lease.
    pub fn start(url: &str, group: &str, id: NodeId, lease: Duration) -> Result<Self, Error> {
        let lock = RedisLock::builder(url)
            .ttl(lease)
            .key_prefix("distkit:election:")
            .op_timeout(lease / 3)
            .build()?;
        let client = redis::Client::open(url)
            .map_err(|e| Error::invalid_input("redis url", e.to_string()))?;
        if group.is_empty() || group.contains(['{', '}']) || group.chars().any(char::is_control) {
            return Err(Error::invalid_input(
                "election group",
                "it must be non-empty, without braces or control characters",
            ));
        }
        let (tx, rx) = watch::channel(Leadership::initial());
        let tx = Arc::new(tx);
        let resign = Arc::new(Notify::new());
        let abandon = Arc::new(Notify::new());
        let campaign = Campaign {
            lock,
            client,
            group: group.to_owned(),
            leader_key: format!("distkit:election:{{{group}}}:leader"),
            id: id.clone(),
            lease,
            tx: tx.clone(),
            resign: resign.clone(),
            abandon: abandon.clone(),
        };
        let task = tokio::spawn(campaign.run());
        Ok(Self {
            id,
            leadership: rx,
            publish: tx,
            resign,
            abandon,
            task: Arc::new(Campaigning(task)),
        })
    }

    /// Stops as a crash would: renewals stop and nothing is released, so the others take
    /// over only when the lease runs out. For failure drills and benchmarks.
    pub fn abandon(&self) {
        self.abandon.notify_one();
        self.publish.send_modify(|l| {
            l.role = Role::Follower;
            l.leader = None;
        });
    }

    /// Stops campaigning and steps down (the held lock is released in the background).
    pub fn stop(&self) {
        self.task.0.abort();
        self.publish.send_modify(|l| {
            l.role = Role::Follower;
            l.leader = None;
        });
    }
}

#[async_trait]
impl LeaderElector for LeaseElection {
    fn id(&self) -> &NodeId {
        &self.id
    }

    fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    async fn resign(&self) -> Result<(), Error> {
        self.resign.notify_one();
        Ok(())
    }
}

struct Campaign {
    lock: RedisLock,
    client: redis::Client,
    group: String,
    leader_key: String,
    id: NodeId,
    lease: Duration,
    tx: Arc<watch::Sender<Leadership>>,
    resign: Arc<Notify>,
    abandon: Arc<Notify>,
}

impl Campaign {
    async fn run(self) {
        let mut conn = None;
        loop {
            let wait = AcquireOptions::new().wait(self.lease).watchdog(true);
            match self.lock.acquire_with(&self.group, wait).await {
                Ok(guard) => {
                    let term = Term::new(guard.fencing_token().get());
                    self.tx.send_replace(Leadership {
                        leader: Some(self.id.clone()),
                        term,
                        role: Role::Leader,
                    });
                    tracing::info!(term = term.get(), id = %self.id, group = self.group, "leads by lease");
                    // Keep the leader note alive as long as the lease (first tick: at once).
                    let mut refresh = tokio::time::interval(self.lease / 3);
                    let resigned = loop {
                        tokio::select! {
                            _ = guard.lost() => break false,
                            () = self.resign.notified() => break true,
                            () = self.abandon.notified() => {
                                let _ = guard.into_lease();
                                return;
                            }
                            _ = refresh.tick() => self.note_leader(&mut conn, term).await,
                        }
                    };
                    self.tx.send_replace(Leadership {
                        leader: None,
                        term,
                        role: Role::Follower,
                    });
                    let _ = guard.release().await;
                    if resigned {
                        // Let another member take over before campaigning again.
                        tokio::time::sleep(self.lease).await;
                    }
                }
                Err(Error::Busy { .. }) => self.observe(&mut conn).await,
                Err(e) => {
                    tracing::debug!(error = %e, "lease campaign attempt failed");
                    tokio::time::sleep(self.lease / 4).await;
                }
            }
        }
    }

    async fn connection(
        &self,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
    ) -> Option<redis::aio::MultiplexedConnection> {
        if conn.is_none() {
            *conn =
                tokio::time::timeout(self.lease, self.client.get_multiplexed_async_connection())
                    .await
                    .ok()
                    .and_then(Result::ok);
        }
        conn.clone()
    }

    /// The leader writes `term id` beside the lock, with the lock's TTL, refreshed with it.
    async fn note_leader(&self, conn: &mut Option<redis::aio::MultiplexedConnection>, term: Term) {
        if let Some(mut c) = self.connection(conn).await {
            let ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
            let r: redis::RedisResult<()> = c
                .pset_ex(&self.leader_key, format!("{} {}", term.get(), self.id), ms)
                .await;
            if r.is_err() {
                *conn = None;
            }
        }
    }

    /// A follower reads who leads.
    async fn observe(&self, conn: &mut Option<redis::aio::MultiplexedConnection>) {
        let Some(mut c) = self.connection(conn).await else {
            return;
        };
        let v: redis::RedisResult<Option<String>> = c.get(&self.leader_key).await;
        let Ok(v) = v else {
            *conn = None;
            return;
        };
        let parsed = v
            .as_deref()
            .and_then(|s| s.split_once(' '))
            .and_then(|(t, id)| Some((Term::new(t.parse().ok()?), NodeId::new(id).ok()?)));
        let next = match parsed {
            Some((term, leader)) => Leadership {
                leader: Some(leader),
                term,
                role: Role::Follower,
            },
            None => Leadership {
                leader: None,
                term: self.tx.borrow().term,
                role: Role::Follower,
            },
        };
        self.tx.send_if_modified(|cur| {
            if *cur != next && next.term >= cur.term {
                *cur = next;
                true
            } else {
                false
            }
        });
    }
}
