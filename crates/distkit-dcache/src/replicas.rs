//! Replicas: each value also lives on the next `r - 1` distinct members of the ring.
//!
//! The owner numbers each write under the key's lock (`max(previous + 1, wall clock in us)`,
//! so numbers keep growing across its restart) and sends it to the other holders, which keep
//! it unless they hold a newer number; a write returns `Ok` once `write_acks` copies (the
//! owner's included) confirmed. When the owner cannot be reached, the next holder that
//! answers serves reads and `get_or_load`, without a load.

use std::time::Duration;

use bytes::Bytes;
use distkit_core::{Error, NodeId};

use crate::cache::{Inner, next_number};
use crate::local::{self, Entry};
use crate::membership::Owner;

impl Inner {
    /// The next write number: `max(previous + 1, wall clock in microseconds)`, so numbers
    /// keep growing across a restart of the owner (as long as its clock does not step back),
    /// and a replica never prefers a value written before the restart.
    /// At the top of the number space it is refused, never saturated: two writes must not
    /// share a number.
    pub(crate) fn next_write(&self) -> Result<u64, Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        next_number(&self.writes, now).ok_or_else(|| self.exhausted("write numbers"))
    }

    /// Owner: sends the write (a value, or a delete when `entry` is `None`) to the other
    /// holders of the key; `Err` when fewer than `write_acks` copies (this one included)
    /// confirmed.
    pub(crate) async fn replicate(&self, key: &str, entry: Option<&Entry>) -> Result<(), Error> {
        if self.replicas <= 1 {
            return Ok(());
        }
        let holders = self.members.load().holders(key, self.replicas);
        let version = match entry {
            Some(e) => e.version,
            None => self.next_write()?,
        };
        let sends = holders.iter().filter_map(|h| match h {
            Owner::Peer(id, url) => Some(async move {
                let r = match entry {
                    Some(e) => {
                        self.client
                            .replicate(url, key, version, &e.value, e.remaining())
                            .await
                    }
                    None => self.client.unreplicate(url, key, version).await,
                };
                (id, r)
            }),
            Owner::Me => None,
        });
        // With fewer members than copies, every member holds the key and all of them count.
        let need = self.write_acks.min(holders.len());
        let mut confirmed = 1;
        let mut failed = Vec::new();
        for (id, r) in futures_util::future::join_all(sends).await {
            match r {
                Ok(()) => confirmed += 1,
                Err(e) => {
                    tracing::debug!(peer = %id, error = %e, "a replica did not confirm");
                    failed.push(id.to_string());
                }
            }
        }
        if confirmed >= need {
            return Ok(());
        }
        Err(Error::Unavailable {
            endpoint: failed.join(", "),
            reason: format!(
                "the write of {key:?} is stored on {confirmed} of {} nodes; {} must confirm",
                holders.len(),
                need
            ),
            source: None,
        })
    }

    /// A replica: keeps the owner's write unless it holds a newer one already. Refused by a
    /// node that is not a replica of the key in its view (the owner's own value is never
    /// replaced this way).
    pub(crate) async fn store_replica(
        &self,
        key: &str,
        version: u64,
        value: Option<(Bytes, Option<Duration>)>,
    ) -> Result<(), Error> {
        let _order = self.versions.lock(key).await;
        let holders = self.members.load().holders(key, self.replicas);
        if holders.first() == Some(&Owner::Me) || !holders.contains(&Owner::Me) {
            return Err(Error::invalid_input(
                "replica write",
                format!("this node is not a replica of {key:?} in its view of the members"),
            ));
        }
        if let Some(h) = &self.hot {
            h.invalidate(key).await;
        }
        if let Some(cur) = self.local.get(key).await
            && cur.version > version
        {
            return Ok(());
        }
        match value {
            Some((v, ttl)) => {
                let entry = self.entry(v, ttl).with_version(version);
                self.local.insert(key.to_owned(), entry).await;
            }
            None => {
                self.local.invalidate(key).await;
            }
        }
        Ok(())
    }

    /// The owner is unreachable: the first other holder that answers serves the read
    /// (`None` when no holder could be asked).
    pub(crate) async fn read_replica(&self, owner: &NodeId, key: &str) -> Option<Option<Bytes>> {
        if self.replicas <= 1 {
            return None;
        }
        for h in self.members.load().holders(key, self.replicas) {
            match h {
                Owner::Me => {
                    let e = local::live(&self.local, key).await;
                    self.metrics.hit_replica.increment(1);
                    return Some(e.map(|e| e.value));
                }
                Owner::Peer(id, url) if id != *owner && self.breaker.open_until(&id).is_none() => {
                    match self.client.get(&url, key).await {
                        Ok(v) => {
                            self.metrics.hit_replica.increment(1);
                            return Some(v.map(|(v, _, _)| v));
                        }
                        Err(e) => self.mark_suspect(&id, &e),
                    }
                }
                Owner::Peer(..) => {}
            }
        }
        None
    }
}
