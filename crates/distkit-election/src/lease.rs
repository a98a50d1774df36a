//! `LeaseElection`: leadership as a Redis lease, for teams that already run Redis.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use distkit_core::{
    AcquireOptions, DistributedLock, Error, LeaderElector, Leadership, NodeId, Role, Term,
};
use distkit_dlock::{RedisConnection, RedisLock, RedisLockBuilder};
use redis::AsyncCommands;
use tokio::sync::{mpsc, oneshot, watch};

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
/// a round trip or two.
///
/// # Who owns the background work
///
/// [`LeaseElection::start`] spawns one campaign task, shared by every clone.
/// [`shutdown`](Self::shutdown) steps down, releases the lease and returns once the task has
/// ended. Dropping the last handle without it closes the task's command channel: the task
/// steps down, releases the lease and ends on its own (within about a lease); if the runtime
/// itself is gone, the lease runs out with its TTL.
#[derive(Clone, Debug)]
pub struct LeaseElection {
    id: NodeId,
    leadership: watch::Receiver<Leadership>,
    commands: mpsc::Sender<Command>,
    task: Arc<Campaigning>,
}

#[derive(Debug)]
enum Command {
    /// Step down if leading (the lease is released first), then answer.
    Resign(oneshot::Sender<()>),
    /// Stop renewing without releasing, as a crash would.
    Abandon,
    /// Step down, release and end the task.
    Shutdown,
}

/// Tells the handles when the campaign has ended. (The campaign needs no abort: when the
/// last handle goes, its command channel closes and it steps down and releases by itself,
/// which an abort would cut short.)
#[derive(Debug)]
struct Campaigning {
    ended: watch::Receiver<bool>,
}

/// Marks the campaign ended however it ends: returned, aborted, panicked, or dropped with
/// its runtime. A leader steps down first: a campaign that no longer renews never claims
/// the lease (the runtime's drop left handles saying "ended" and "leader" at once).
struct EndedOnDrop {
    ended: watch::Sender<bool>,
    leadership: Arc<watch::Sender<Leadership>>,
}

impl Drop for EndedOnDrop {
    fn drop(&mut self) {
        self.leadership.send_if_modified(|l| {
            if l.role == Role::Leader {
                l.role = Role::Follower;
                l.leader = None;
                true
            } else {
                false
            }
        });
        self.ended.send_replace(true);
    }
}

impl LeaseElection {
    /// Joins election group `group` on the Redis server at `url` as `id`, with `lease` as the
    /// lock's TTL, and starts campaigning on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad URL, group name (empty, with braces or control
    /// characters) or lease; [`Error::TooLarge`] for a group name over
    /// [`MAX_NAME_LEN`](distkit_dlock::MAX_NAME_LEN) bytes; [`Error::Unavailable`] outside a
    /// tokio runtime.
    pub fn start(url: &str, group: &str, id: NodeId, lease: Duration) -> Result<Self, Error> {
        Self::start_with(RedisLock::builder(url), group, id, lease)
    }

    /// As [`start`](Self::start), on the primary of `master` in a Redis Sentinel deployment
    /// found through `sentinels`. Through a failover the leader keeps leading when its
    /// renewals reach the new primary within its lease; otherwise it steps down as its lease
    /// runs out and a leader is elected on the new primary with a larger term (the term is
    /// the lock's fencing token, floored by the server's clock). Two leaders never share a
    /// term.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start), and [`Error::InvalidInput`] for no sentinel.
    pub fn start_sentinel<S: Into<String>>(
        master: &str,
        sentinels: impl IntoIterator<Item = S>,
        group: &str,
        id: NodeId,
        lease: Duration,
    ) -> Result<Self, Error> {
        Self::start_with(RedisLock::sentinel(master, sentinels), group, id, lease)
    }

    /// As [`start`](Self::start), on a Redis Cluster reached through `nodes`: the group's
    /// lock and leader note share the `{group}` hash tag, so one primary (and its replicas)
    /// holds the election. Through a cluster failover of that primary, as with
    /// [`start_sentinel`](Self::start_sentinel).
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start), and [`Error::InvalidInput`] for no node.
    pub fn start_cluster<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
        group: &str,
        id: NodeId,
        lease: Duration,
    ) -> Result<Self, Error> {
        Self::start_with(RedisLock::cluster(nodes), group, id, lease)
    }

    /// As [`start`](Self::start), on the deployment `lock` is configured for (one server,
    /// Sentinel or Cluster), with its other settings, such as
    /// [`min_replicas`](distkit_dlock::RedisLockBuilder::min_replicas) (a leadership a
    /// replica acknowledged survives a promotion of that replica). The election sets the
    /// lock's TTL to `lease`, its op timeout to a third of it, and its key prefix to
    /// `distkit:election:`.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start), and what [`RedisLockBuilder::build`](
    /// distkit_dlock::RedisLockBuilder::build) refuses.
    pub fn start_with(
        lock: RedisLockBuilder,
        group: &str,
        id: NodeId,
        lease: Duration,
    ) -> Result<Self, Error> {
        let lock = lock
            .ttl(lease)
            .key_prefix("distkit:election:")
            .op_timeout(lease / 3)
            .build()?;
        Self::campaign(lock, group, id, lease)
    }

    fn campaign(lock: RedisLock, group: &str, id: NodeId, lease: Duration) -> Result<Self, Error> {
        // The group names the lock: the lock's own rules, so a name every acquire refuses
        // (one over MAX_NAME_LEN bytes was, and nobody ever led) is refused here.
        distkit_dlock::check_name("election group", group)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::Unavailable {
            endpoint: id.to_string(),
            reason: "a lease election needs a tokio runtime to run on (start it inside one)".into(),
            source: Some(Arc::new(e)),
        })?;
        let (tx, rx) = watch::channel(Leadership::initial());
        let tx = Arc::new(tx);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (ended_tx, ended_rx) = watch::channel(false);
        let campaign = Campaign {
            lock,
            group: group.to_owned(),
            leader_key: format!("distkit:election:{{{group}}}:leader"),
            id: id.clone(),
            lease,
            tx: tx.clone(),
            commands: cmd_rx,
        };
        let ended = EndedOnDrop {
            ended: ended_tx,
            leadership: tx,
        };
        runtime.spawn(async move {
            let _ended = ended;
            campaign.run().await;
        });
        Ok(Self {
            id,
            leadership: rx,
            commands: cmd_tx,
            task: Arc::new(Campaigning { ended: ended_rx }),
        })
    }

    /// Stops as a crash would: renewals stop and nothing is released, so the others take
    /// over only when the lease runs out. The task then ends. For failure drills and
    /// benchmarks.
    pub fn abandon(&self) {
        let _ = self.commands.try_send(Command::Abandon);
    }

    /// Stops campaigning: steps down, releases the lease if held (so another member takes
    /// over at once), and returns once the campaign task has ended. Calling it again, or
    /// from several clones, returns once the task has ended.
    pub async fn shutdown(&self) {
        if self.commands.send(Command::Shutdown).await.is_err() {
            // The task is gone already (or going): nothing to release.
        }
        let mut ended = self.task.ended.clone();
        let _ = ended.wait_for(|e| *e).await;
    }

    /// Whether the campaign task has ended.
    #[must_use]
    pub fn has_ended(&self) -> bool {
        *self.task.ended.borrow()
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
        let (tx, rx) = oneshot::channel();
        let stopped = || Error::Unavailable {
            endpoint: self.id.to_string(),
            reason: "the lease election has stopped".into(),
            source: None,
        };
        self.commands
            .send(Command::Resign(tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

struct Campaign {
    lock: RedisLock,
    group: String,
    leader_key: String,
    id: NodeId,
    lease: Duration,
    tx: Arc<watch::Sender<Leadership>>,
    commands: mpsc::Receiver<Command>,
}

/// How a stretch of leading ended.
enum Led {
    Lost,
    Resigned(oneshot::Sender<()>),
    Abandoned,
    Shutdown,
}

impl Campaign {
    async fn run(mut self) {
        let mut conn = None;
        loop {
            let wait = AcquireOptions::new().wait(self.lease).watchdog(true);
            // A command while not leading is answered at once: a resign is never kept for a
            // later win.
            let attempt = tokio::select! {
                r = self.lock.acquire_with(&self.group, wait) => r,
                c = self.commands.recv() => {
                    match c {
                        Some(Command::Resign(done)) => {
                            let _ = done.send(());
                            continue;
                        }
                        None | Some(Command::Abandon | Command::Shutdown) => return,
                    }
                }
            };
            match attempt {
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
                    let led = loop {
                        tokio::select! {
                            _ = guard.lost() => break Led::Lost,
                            c = self.commands.recv() => break match c {
                                Some(Command::Resign(done)) => Led::Resigned(done),
                                Some(Command::Abandon) => Led::Abandoned,
                                None | Some(Command::Shutdown) => Led::Shutdown,
                            },
                            _ = refresh.tick() => {
                                // The note never holds up the watch on the lease: against a
                                // server that stopped answering, the write waited while the
                                // lease ran out, and the leader kept claiming for seconds
                                // (an outside review saw 2.8 s past a 600 ms lease).
                                let lost = tokio::select! {
                                    biased;
                                    _ = guard.lost() => true,
                                    () = self.note_leader(&mut conn, term) => false,
                                };
                                if lost {
                                    break Led::Lost;
                                }
                            }
                        }
                    };
                    self.step_down(term);
                    if matches!(led, Led::Abandoned) {
                        let _ = guard.into_lease();
                        return;
                    }
                    let _ = guard.release().await;
                    match led {
                        Led::Resigned(done) => {
                            let _ = done.send(());
                            // Let another member take over before campaigning again.
                            if !self.pause(self.lease).await {
                                return;
                            }
                        }
                        Led::Shutdown => return,
                        Led::Lost | Led::Abandoned => {}
                    }
                }
                Err(Error::Busy { .. }) => self.observe(&mut conn).await,
                Err(e) => {
                    tracing::debug!(error = %e, "lease campaign attempt failed");
                    if !self.pause(self.lease / 4).await {
                        return;
                    }
                }
            }
        }
    }

    fn step_down(&self, term: Term) {
        self.tx.send_replace(Leadership {
            leader: None,
            term,
            role: Role::Follower,
        });
    }

    /// Sleeps for `d`, answering resigns at once; false when told to stop meanwhile.
    async fn pause(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                c = self.commands.recv() => match c {
                    Some(Command::Resign(done)) => {
                        let _ = done.send(());
                    }
                    None | Some(Command::Abandon | Command::Shutdown) => return false,
                },
            }
        }
    }

    /// The connection for the leader note: kept while it works, a fresh one of the lock
    /// service's pool after a failure (with Sentinel, to the primary named now).
    async fn connection<'a>(
        &self,
        conn: &'a mut Option<RedisConnection>,
    ) -> Option<&'a mut RedisConnection> {
        if conn.is_none() {
            *conn = self.lock.connection().await.ok();
        }
        conn.as_mut()
    }

    /// The leader writes `term id` beside the lock, with the lock's TTL, refreshed with it.
    async fn note_leader(&self, conn: &mut Option<RedisConnection>, term: Term) {
        if let Some(c) = self.connection(conn).await {
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
    async fn observe(&self, conn: &mut Option<RedisConnection>) {
        let Some(c) = self.connection(conn).await else {
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
