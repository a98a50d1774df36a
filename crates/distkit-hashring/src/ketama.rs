//! A libketama-compatible continuum, for fleets that already shard memcached with ketama.

use std::collections::HashSet;
use std::fmt;

use distkit_core::{Locator, NodeId};

use crate::{Node, RingError};

/// A continuum that maps keys exactly as libketama and the clients compatible with it
/// (spymemcached's `KETAMA_HASH`, twemproxy's `ketama` distribution, libmemcached in libketama
/// mode) do, so a fleet can move to distkit without remapping a key.
///
/// Each server, named by its `host:port` address, gets
/// `floorf(weight / total_weight * 40 * server_count)` MD5 digests of `"host:port-i"`; each
/// digest gives four points (little-endian `u32`s). At equal weights that is 40 digests, 160
/// points, a server. A key hashes to the first four bytes of its MD5 (little-endian) and
/// belongs to the first point at or after it, wrapping around.
///
/// Use it for compatibility only: MD5 is slow and 160 points balance worse than
/// [`HashRing`](crate::HashRing)'s default.
///
/// ```
/// use distkit_core::NodeId;
/// use distkit_hashring::{Ketama, Node};
///
/// // spymemcached's published libketama-compatibility vectors.
/// let servers = (0..5).map(|i| {
///     let addr = format!("127.0.0.1:{}", 10000 + i);
///     Node::new(NodeId::new(&addr).unwrap(), addr)
/// });
/// let ketama = Ketama::new(servers)?;
/// assert_eq!(ketama.locate(b"36")?.address(), "127.0.0.1:10002");
/// assert_eq!(ketama.locate(b"10037")?.address(), "127.0.0.1:10003");
/// # Ok::<(), distkit_hashring::RingError>(())
/// ```
#[derive(Clone)]
pub struct Ketama {
    servers: Vec<Node>,
    /// (point, server index), sorted.
    points: Vec<(u32, u32)>,
}

impl Ketama {
    /// Builds the continuum for `servers`; each node's address is the `host:port` string that
    /// libketama hashes, and its weight is libketama's memory figure.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroWeight`], [`RingError::DuplicateNode`], or [`RingError::TooManyPoints`]
    /// when there are more servers than a continuum can hold.
    pub fn new(servers: impl IntoIterator<Item = Node>) -> Result<Self, RingError> {
        let servers: Vec<Node> = servers.into_iter().collect();
        let (mut ids, mut addresses) = (HashSet::new(), HashSet::new());
        for s in &servers {
            if s.weight() == 0 {
                return Err(RingError::ZeroWeight { id: s.id().clone() });
            }
            if !ids.insert(s.id()) || !addresses.insert(s.address()) {
                return Err(RingError::DuplicateNode { id: s.id().clone() });
            }
        }
        if servers.len() > 100_000 {
            return Err(RingError::TooManyPoints {
                requested: servers.len() as u64 * 160,
                limit: 16_000_000,
            });
        }
        let total: u64 = servers.iter().map(|s| u64::from(s.weight())).sum();
        let n = servers.len();
        let mut points = Vec::with_capacity(n * 160);
        for (si, s) in servers.iter().enumerate() {
            for k in 0..digests_for(s.weight(), total, n) {
                let digest = md5::compute(format!("{}-{k}", s.address()));
                for h in 0..4 {
                    let p = u32::from_le_bytes([
                        digest[h * 4],
                        digest[h * 4 + 1],
                        digest[h * 4 + 2],
                        digest[h * 4 + 3],
                    ]);
                    points.push((p, si as u32));
                }
            }
        }
        points.sort_unstable();
        Ok(Self { servers, points })
    }

    /// libketama's key hash: the first four bytes of MD5(key), little-endian.
    #[must_use]
    pub fn hash(key: &[u8]) -> u32 {
        let d = md5::compute(key);
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    }

    /// The server that owns `key`.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without servers.
    pub fn locate(&self, key: &[u8]) -> Result<&Node, RingError> {
        self.locate_hash(Self::hash(key))
    }

    /// The server for a key whose ketama hash is `hash`.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without servers.
    pub fn locate_hash(&self, hash: u32) -> Result<&Node, RingError> {
        let i = self.position(hash)?;
        Ok(&self.servers[self.points[i].1 as usize])
    }

    /// The number of points on the continuum.
    #[must_use]
    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    /// The servers.
    #[must_use]
    pub fn servers(&self) -> &[Node] {
        &self.servers
    }

    fn position(&self, hash: u32) -> Result<usize, RingError> {
        if self.points.is_empty() {
            return Err(RingError::Empty);
        }
        let i = self.points.partition_point(|&(p, _)| p < hash);
        Ok(if i == self.points.len() { 0 } else { i })
    }
}

/// libketama's `floorf(pct * 40.0 * (float)numservers)`: `pct` is a float, the product is
/// computed in double (the literal `40.0` is a double) and converted back to float for
/// `floorf`. Reproduced operation by operation so rounding matches.
fn digests_for(weight: u32, total: u64, servers: usize) -> u32 {
    let pct = weight as f32 / total as f32;
    let product = f64::from(pct) * 40.0 * f64::from(servers as f32);
    (product as f32).floor() as u32
}

impl fmt::Debug for Ketama {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ketama")
            .field("servers", &self.servers.len())
            .field("points", &self.points.len())
            .finish()
    }
}

impl Locator for Ketama {
    fn owner(&self, key: &[u8]) -> Result<NodeId, distkit_core::Error> {
        Ok(self.locate(key)?.id().clone())
    }

    fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, distkit_core::Error> {
        let start = self.position(Self::hash(key))?;
        let want = n.min(self.servers.len());
        let mut out: Vec<u32> = Vec::with_capacity(want);
        for step in 0..self.points.len() {
            if out.len() == want {
                break;
            }
            let s = self.points[(start + step) % self.points.len()].1;
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Ok(out
            .into_iter()
            .map(|s| self.servers[s as usize].id().clone())
            .collect())
    }

    fn node_count(&self) -> usize {
        self.servers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addr: &str, weight: u32) -> Node {
        Node::new(NodeId::new(addr).unwrap(), addr).with_weight(weight)
    }

    fn spy(n: u16) -> Ketama {
        Ketama::new((0..n).map(|i| node(&format!("127.0.0.1:{}", 10000 + i), 1))).unwrap()
    }

    fn at(k: &Ketama, key: &str) -> String {
        k.locate(key.as_bytes()).unwrap().address().to_owned()
    }

    /// spymemcached's `KetamaNodeLocatorTest` (published expectations for libketama
    /// compatibility, servers `127.0.0.1:10000 + i`).
    #[test]
    fn matches_spymemcached_published_vectors() {
        let k5 = spy(5);
        assert_eq!(at(&k5, "36"), "127.0.0.1:10002");
        assert_eq!(at(&k5, "10037"), "127.0.0.1:10003");
        assert_eq!(at(&k5, "22051"), "127.0.0.1:10001");
        assert_eq!(at(&k5, "49044"), "127.0.0.1:10004");
        assert_eq!(at(&k5, "dustin"), "127.0.0.1:10000");
        assert_eq!(at(&k5, "noelani"), "127.0.0.1:10002");
        assert_eq!(at(&k5, "some other key"), "127.0.0.1:10004");

        let k4 = spy(4);
        assert_eq!(at(&k4, "dustin"), "127.0.0.1:10000");
        assert_eq!(at(&k4, "noelani"), "127.0.0.1:10002");
        assert_eq!(at(&k4, "some other key"), "127.0.0.1:10000");
        // Keys that hash past the last point wrap to the first.
        assert_eq!(at(&k4, "7QHNPFVC"), "127.0.0.1:10001");
        assert_eq!(at(&k4, "N6H4245M"), "127.0.0.1:10001");
        assert_eq!(k4.point_count(), 4 * 160);
    }

    /// Published expectations of a libketama binding with weighted servers (400/600/600).
    #[test]
    fn matches_weighted_libketama_published_vectors() {
        let k = Ketama::new([
            node("127.0.0.1:1", 400),
            node("127.0.0.1:2", 600),
            node("127.0.0.1:3", 600),
        ])
        .unwrap();
        // 400/1600 * 40 * 3 = 30 digests, 600/1600 * 40 * 3 = 45 digests.
        assert_eq!(k.point_count(), (30 + 45 + 45) * 4);
        assert_eq!(at(&k, ""), "127.0.0.1:3");
        assert_eq!(at(&k, "1"), "127.0.0.1:3");
        assert_ne!(at(&k, "1488"), "127.0.0.1:1");
        assert_eq!(at(&k, "\0\0\0\0\0\0\0\0\0"), "127.0.0.1:1");
        assert_eq!(at(&k, "\0\0\0\0\0\0\0"), "127.0.0.1:2");
    }

    #[test]
    fn key_hash_is_md5_prefix_little_endian() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(Ketama::hash(b""), 0xd98c_1dd4);
    }

    #[test]
    fn bad_input_is_typed() {
        assert_eq!(
            Ketama::new([node("a:1", 0)]).unwrap_err(),
            RingError::ZeroWeight {
                id: NodeId::new("a:1").unwrap()
            }
        );
        assert!(matches!(
            Ketama::new([node("a:1", 1), node("a:1", 2)]),
            Err(RingError::DuplicateNode { .. })
        ));
        let empty = Ketama::new([]).unwrap();
        assert_eq!(empty.locate(b"k").unwrap_err(), RingError::Empty);
        assert!(Locator::owner(&empty, b"k").is_err());
    }
}
