//! The cache trait and the loader handed to `get_or_load`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{BoxError, Error};

/// A value produced by a [`Loader`], with the TTL it should be cached for (`None`: the cache's
/// default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The bytes to cache and return.
    pub value: Bytes,
    /// How long to keep them; `None` for the cache's default.
    pub ttl: Option<Duration>,
}

impl Loaded {
    /// A value with an explicit TTL.
    #[must_use]
    pub fn with_ttl(value: impl Into<Bytes>, ttl: Duration) -> Self {
        Self {
            value: value.into(),
            ttl: Some(ttl),
        }
    }
}

impl From<Bytes> for Loaded {
    fn from(value: Bytes) -> Self {
        Self { value, ttl: None }
    }
}

impl From<Vec<u8>> for Loaded {
    fn from(value: Vec<u8>) -> Self {
        Self::from(Bytes::from(value))
    }
}

impl From<&'static [u8]> for Loaded {
    fn from(value: &'static [u8]) -> Self {
        Self::from(Bytes::from_static(value))
    }
}

impl From<String> for Loaded {
    fn from(value: String) -> Self {
        Self::from(Bytes::from(value))
    }
}

impl From<&'static str> for Loaded {
    fn from(value: &'static str) -> Self {
        Self::from(Bytes::from_static(value.as_bytes()))
    }
}

/// The future a [`Loader`] runs.
pub type LoadFuture = Pin<Box<dyn Future<Output = Result<Loaded, BoxError>> + Send>>;

/// Computes a missing cache value: called at most once per key at a time by a cache that
/// coalesces loads.
///
/// ```
/// use distkit_core::Loader;
///
/// let loader = Loader::new(|| async { Ok::<_, std::io::Error>(b"v".to_vec()) });
/// # let _ = loader;
/// ```
pub struct Loader(Box<dyn FnOnce() -> LoadFuture + Send>);

impl Loader {
    /// Wraps an async closure returning a value (bytes, a `String`, or [`Loaded`] with a TTL)
    /// or any error.
    pub fn new<F, Fut, V, E>(f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Into<Loaded>,
        E: Into<BoxError>,
    {
        Self(Box::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.map(Into::into).map_err(Into::into) })
        }))
    }

    /// Starts the load.
    #[must_use]
    pub fn load(self) -> LoadFuture {
        (self.0)()
    }
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Loader(..)")
    }
}

/// A key-value cache of bytes: a local tier, or a cluster of peers that own keys by hash.
#[async_trait]
pub trait Cache: Send + Sync + fmt::Debug {
    /// The value under `key`, if cached and not expired.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for a key over the size limit; [`Error::Unavailable`] when the
    /// owner of the key cannot be reached and the cache has no fallback.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error>;

    /// Stores `value` under `key` for `ttl` (`None`: the cache's default).
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for a key or value over the size limits, [`Error::InvalidInput`]
    /// for a TTL the cache cannot keep; [`Error::Unavailable`] when the owner cannot be
    /// reached.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error>;

    /// Removes `key`; `true` if a value was removed.
    ///
    /// # Errors
    ///
    /// As for [`set`](Cache::set).
    async fn delete(&self, key: &str) -> Result<bool, Error>;

    /// The value under `key`, loading it with `loader` when missing. Concurrent callers for the
    /// same key share one load; a failed load is not cached.
    ///
    /// # Errors
    ///
    /// [`Error::Load`] when the loader failed, otherwise as for [`get`](Cache::get).
    async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Bytes, Error>;
}

#[async_trait]
impl<T: Cache + ?Sized> Cache for Arc<T> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        (**self).get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error> {
        (**self).set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, Error> {
        (**self).delete(key).await
    }
    async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        (**self).get_or_load(key, loader).await
    }
}

#[async_trait]
impl<T: Cache + ?Sized> Cache for Box<T> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        (**self).get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error> {
        (**self).set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, Error> {
        (**self).delete(key).await
    }
    async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        (**self).get_or_load(key, loader).await
    }
}
